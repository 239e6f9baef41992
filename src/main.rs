fn main() {
    std::process::exit(anetrain::cli::main());
}
