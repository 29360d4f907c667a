//! A zbus client on kdbus's native transport: calls `--example echo_service` through
//! a generated proxy, as any zbus client would.
//!
//!     cargo run -p kdbus-zbus --example echo_client -- /run/user/1000/kdbus/1000-user/bus

use zbus::proxy;

#[proxy(
    interface = "org.kdbus.ZbusEcho",
    default_service = "org.kdbus.ZbusEcho",
    default_path = "/org/kdbus/ZbusEcho"
)]
trait Echo {
    fn echo(&self, text: &str) -> zbus::Result<String>;
    fn count(&self) -> zbus::Result<u32>;
}

fn main() -> zbus::Result<()> {
    let bus = std::env::args()
        .nth(1)
        .ok_or_else(|| zbus::Error::Failure("usage: echo_client BUS".into()))?;
    zbus::block_on(async {
        let conn = kdbus_zbus::connect(&bus).await?;
        let echo = EchoProxy::new(&conn).await?;
        println!("{}", echo.echo("hello over kdbus").await?);
        println!("{} calls served", echo.count().await?);
        Ok(())
    })
}
