//! What both vigil binaries (and their tests) ask of the operating system, each in one place: the wall clock and the
//! calendar ([`clock`]), private directories and atomically replaced private files ([`fs`]), and the pacing of
//! retries ([`backoff`]), and the layout of the utmp file ([`utmp`]). No async runtime, no SSH, no database: the agent links it and must stay small.

pub mod backoff;
pub mod clock;
pub mod fs;
pub mod utmp;
