//! The sandbox helper as a standalone binary, used by this crate's tests (the `cod` binary
//! runs the same code as `cod __jail`). It expects its control socket on fd 3 and is started
//! by `cod_sandbox::Jail::spawn`; run by hand it explains that and exits.

fn main() {
    cod_sandbox::helper_main()
}
