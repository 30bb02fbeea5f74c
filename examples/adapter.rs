//! Prints the adapter hotrow picks on this machine (honours WGPU_BACKEND / WGPU_ADAPTER_NAME).
//!
//!     cargo run --example adapter

fn main() {
    env_logger::init();
    match hotrow::GpuContext::new() {
        Ok(ctx) => println!("hotrow adapter: {}", ctx.adapter()),
        Err(e) => {
            eprintln!("hotrow: {e}");
            std::process::exit(1);
        }
    }
}
