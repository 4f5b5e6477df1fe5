//! Rebuilds the server when a migration is added: refinery's `embed_migrations!` does not notice new files itself.

fn main() {
    println!("cargo:rerun-if-changed=src/store/migrations");
}
