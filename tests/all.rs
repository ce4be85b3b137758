//! Integration tests, one binary so they link once. Docker tests use the real daemon
//! and fail (not skip) when `OI_REQUIRE_DOCKER=1`.
mod suite;
