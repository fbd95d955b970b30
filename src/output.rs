//! The command-line tools' output on stdout. A reader that goes away
//! (`dctunnel certs show ... | head`) ends the command quietly, as it does
//! for the usual Unix tools, instead of a panic ("failed printing to
//! stdout: Broken pipe", exit 101).

use std::io::Write;

/// Writes one piece of output; used through [`outln!`] and [`out!`].
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // Whoever reads has all it wanted: stop here, successfully.
            std::process::exit(0);
        }
        // Any other failure (a full disk under `> file`) is worth saying.
        eprintln!("dctunnel: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for the command-line tools: see [`write`].
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for the command-line tools: see [`write`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*)) };
}
