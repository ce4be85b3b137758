"""Process guards for oi's runner and kernels (Python standard library only, Linux).

Owns: the prctl(2) and seccomp(2) calls that keep user code away from oi's own
processes and from making dangerous files:

- `make_undumpable()`: a non-dumpable process cannot be ptraced by same-uid code, nor
  its /proc/<pid>/fd, /proc/<pid>/mem or /proc/<pid>/environ opened, so code that runs
  as the runner's user cannot write frames onto the runner's stdout or read its pipes.
- `die_with_parent()`: a kernel started on the host (`--unsafe`) is killed when the
  runner goes, even mid-block (inside a container the PID namespace does that).
- `install_file_mode_filter()`: a seccomp filter, inherited by every process started
  after it and impossible to remove, that refuses to make setuid/setgid files and
  device nodes (chmod, fchmod, fchmodat, fchmodat2, open/openat/creat with O_CREAT or
  O_TMPFILE, mknod, mknodat all fail with EPERM when the mode asks for them), refuses
  openat2 and io_uring (ENOSYS, so that libc falls back to the calls above), file
  capabilities when the process could still set them, and every system call of a
  foreign ABI (i386 and x32 on x86_64, arm32 on aarch64). The workspace may be a host
  folder bind-mounted read-write, and bind mounts allow setuid: without this, code
  could leave a setuid copy of a shell there for a host user to run.

Left to others: the container's own isolation (capabilities, Docker's seccomp profile,
no-new-privileges), which this only tightens; deciding when to install the filter (the
runner does, inside a sandbox only).
"""

import ctypes
import errno
import os
import platform
import sys

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_prctl_fn = _libc.prctl
_prctl_fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl_fn.restype = ctypes.c_int


def _prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    if _prctl_fn(option, arg2, arg3, arg4, arg5) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(%d): %s" % (option, os.strerror(err)))


def make_undumpable():
    """Closes this process to same-uid ptrace and /proc/<pid>/{fd,mem,environ}."""
    _prctl(PR_SET_DUMPABLE, 0)


def die_with_parent(sig=9):
    """Asks the kernel to send `sig` to this process when its parent thread ends. Safe
    between fork and exec (no allocation but ctypes' own)."""
    _prctl(PR_SET_PDEATHSIG, sig)


# ---------------------------------------------------------------------------
# The seccomp filter

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# Classic BPF opcodes seccomp accepts.
_LD_W_ABS = 0x20  # A = seccomp_data[k] (32 bits)
_ALU_AND_K = 0x54  # A &= k
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

S_ISUID_GID = 0o6000
S_IFMT = 0o170000
S_IFCHR = 0o020000
S_IFBLK = 0o060000
O_CREAT = 0o100
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE, the same on x86_64 and aarch64

CAP_SETFCAP = 31

# What each guarded call looks like: (kind, argument indexes). Kinds:
#   "open"  (flags, mode): refused when it creates and the mode is setuid/setgid
#   "mode"  (mode,):       refused when the mode is setuid/setgid (chmod family, creat)
#   "mknod" (mode,):       refused for setuid/setgid or a character/block device
#   "nosys" ():            always ENOSYS
#   "eperm" ():            always EPERM (only added when file capabilities are settable)
_X86_64 = {
    2: ("open", 1, 2),  # open
    257: ("open", 2, 3),  # openat
    85: ("mode", 1),  # creat
    90: ("mode", 1),  # chmod
    91: ("mode", 1),  # fchmod
    268: ("mode", 2),  # fchmodat
    452: ("mode", 2),  # fchmodat2
    133: ("mknod", 1),  # mknod
    259: ("mknod", 2),  # mknodat
    437: ("nosys",),  # openat2: its flags sit in a struct a filter cannot read
    425: ("nosys",),  # io_uring_setup: io_uring's openat bypasses seccomp
    426: ("nosys",),  # io_uring_enter
    427: ("nosys",),  # io_uring_register
}
_X86_64_XATTR = (188, 189, 190, 463)  # setxattr, lsetxattr, fsetxattr, setxattrat

_AARCH64 = {
    56: ("open", 2, 3),  # openat (no legacy open/creat/chmod/mknod on aarch64)
    52: ("mode", 1),  # fchmod
    53: ("mode", 2),  # fchmodat
    452: ("mode", 2),  # fchmodat2
    33: ("mknod", 2),  # mknodat
    437: ("nosys",),  # openat2
    425: ("nosys",),  # io_uring_setup
    426: ("nosys",),  # io_uring_enter
    427: ("nosys",),  # io_uring_register
}
_AARCH64_XATTR = (5, 6, 7, 463)


def _arg_low(index):
    """Offset of the low 32 bits of syscall argument `index` in struct seccomp_data."""
    return 16 + 8 * index + (4 if sys.byteorder == "big" else 0)


class _Assembler:
    """Classic BPF with symbolic jump targets (seccomp filters only jump forward)."""

    def __init__(self):
        self.code = []  # (op, jt label, jf label, k)
        self.labels = {}

    def label(self, name):
        self.labels[name] = len(self.code)

    def op(self, code, k=0, jt=None, jf=None):
        self.code.append((code, jt, jf, k))

    def assemble(self):
        out = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                off = 0 if target is None else self.labels[target] - i - 1
                if not 0 <= off <= 255:
                    raise ValueError("seccomp filter jump out of range")
                offsets.append(off)
            out.append((code, offsets[0], offsets[1], k))
        return out


def filter_program(machine=None, guard_xattrs=False):
    """The filter for this machine as (code, jt, jf, k) instructions."""
    machine = machine or platform.machine()
    if machine in ("x86_64", "amd64"):
        arch, table, xattrs, x32 = AUDIT_ARCH_X86_64, dict(_X86_64), _X86_64_XATTR, True
    elif machine in ("aarch64", "arm64"):
        arch, table, xattrs, x32 = AUDIT_ARCH_AARCH64, dict(_AARCH64), _AARCH64_XATTR, False
    else:
        raise OSError(errno.ENOSYS, "no file-mode filter for the %s architecture" % machine)
    if guard_xattrs:
        table.update({nr: ("eperm",) for nr in xattrs})
    asm = _Assembler()
    asm.op(_LD_W_ABS, 4)  # arch
    asm.op(_JEQ_K, arch, jf="nosys")
    asm.op(_LD_W_ABS, 0)  # syscall number
    if x32:
        asm.op(_JGE_K, X32_SYSCALL_BIT, jt="nosys")
    # Calls refused outright jump to their verdict; the others to a check of their mode.
    verdicts = {"nosys": "nosys", "eperm": "eperm"}
    for nr in sorted(table):
        asm.op(_JEQ_K, nr, jt=verdicts.get(table[nr][0], "nr%d" % nr))
    asm.op(_RET_K, SECCOMP_RET_ALLOW)
    for nr in sorted(table):
        kind, *args = table[nr]
        if kind in verdicts:
            continue
        asm.label("nr%d" % nr)
        if kind == "open":
            asm.op(_LD_W_ABS, _arg_low(args[0]))
            asm.op(_JSET_K, O_CREAT | O_TMPFILE_BIT, jf="allow")
            asm.op(_LD_W_ABS, _arg_low(args[1]))
            asm.op(_JSET_K, S_ISUID_GID, jt="eperm", jf="allow")
        elif kind == "mode":
            asm.op(_LD_W_ABS, _arg_low(args[0]))
            asm.op(_JSET_K, S_ISUID_GID, jt="eperm", jf="allow")
        elif kind == "mknod":
            asm.op(_LD_W_ABS, _arg_low(args[0]))
            asm.op(_JSET_K, S_ISUID_GID, jt="eperm")
            asm.op(_ALU_AND_K, S_IFMT)
            asm.op(_JEQ_K, S_IFCHR, jt="eperm")
            asm.op(_JEQ_K, S_IFBLK, jt="eperm", jf="allow")
    asm.label("allow")
    asm.op(_RET_K, SECCOMP_RET_ALLOW)
    asm.label("eperm")
    asm.op(_RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
    asm.label("nosys")
    asm.op(_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS)
    return asm.assemble()


def _bounding_capabilities():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return ~0  # unknown: assume the worst


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def install_file_mode_filter():
    """Installs the filter on this thread; call before starting any thread, so that
    every thread and process made afterwards inherits it. Raises OSError on failure."""
    # File capabilities need CAP_SETFCAP: refuse setting any extended attribute only
    # where a process of this sandbox could still hold it (root with capabilities kept).
    guard_xattrs = bool(_bounding_capabilities() & (1 << CAP_SETFCAP))
    program = filter_program(guard_xattrs=guard_xattrs)
    filters = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    fprog = _SockFprog(len(program), filters)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def describe_program(program):
    """The filter as text, one instruction a line (for debugging)."""
    return "\n".join("%3d: %02x %3d %3d %#x" % ((i,) + tuple(ins)) for i, ins in enumerate(program))


if __name__ == "__main__":
    print(describe_program(filter_program()))
