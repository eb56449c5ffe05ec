//! Smallest use of both modes.
fn main() {
    tandem::init();
    for mode in [tandem::Mode::Thread, tandem::Mode::Process] {
        let h = tandem::spawn(mode, 21u64, |x| x * 2).unwrap();
        println!("{mode:?} {:?} -> {}", h.id(), h.join().unwrap());
    }
    let h = tandem::process::Builder::new()
        .start_method(tandem::StartMethod::ForkServer)
        .spawn(String::from("fork server"), |s| format!("{s} says hi from {}", std::process::id()))
        .unwrap();
    println!("{}", h.join().unwrap());
    let h = tandem::process::spawn((), |()| -> u8 { panic!("boom") }).unwrap();
    println!("{}", h.join().unwrap_err());
    let h = tandem::process::spawn((), |()| -> u8 { std::process::abort() }).unwrap();
    println!("{}", h.join().unwrap_err());
}
