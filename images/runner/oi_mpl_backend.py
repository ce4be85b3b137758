"""matplotlib backend for oi: Agg rendering, with `plt.show()` sending the open
figures to the host as PNG image events (through oi_kernel) instead of a window."""

from matplotlib.backend_bases import _Backend
from matplotlib.backends.backend_agg import _BackendAgg


@_Backend.export
class _BackendOI(_BackendAgg):
    @staticmethod
    def show(*args, **kwargs):
        import oi_kernel

        # Outside oi's kernel (a script the block started) there is nowhere to send
        # figures: behave like Agg, whose show() does nothing.
        if oi_kernel.is_kernel():
            oi_kernel.emit_figures()
