fn main() {
    print!("{}", system_upgrade_controller::api::crd_yaml().unwrap());
}
