//! A zbus service on kdbus's native transport: owns `org.kdbus.ZbusEcho` and answers
//! `Echo(s) -> s` and `Count() -> u` on `/org/kdbus/ZbusEcho`, as any zbus service
//! would; only the connection comes from `kdbus_zbus`.
//!
//!     cargo run -p kdbus-zbus --example echo_service -- /run/user/1000/kdbus/1000-user/bus
//!
//! (the bus path is the one `kdbusd` printed). Calls come from `--example echo_client`.

use zbus::interface;

struct Echo {
    calls: u32,
}

#[interface(name = "org.kdbus.ZbusEcho")]
impl Echo {
    fn echo(&mut self, text: String) -> String {
        self.calls += 1;
        text
    }

    fn count(&self) -> u32 {
        self.calls
    }
}

fn main() -> zbus::Result<()> {
    let bus = std::env::args()
        .nth(1)
        .ok_or_else(|| zbus::Error::Failure("usage: echo_service BUS".into()))?;
    zbus::block_on(async {
        let _conn = kdbus_zbus::builder(&bus)?
            .serve_at("/org/kdbus/ZbusEcho", Echo { calls: 0 })?
            .name("org.kdbus.ZbusEcho")?
            .build()
            .await?;
        println!("org.kdbus.ZbusEcho serving on {bus}");
        std::future::pending::<()>().await;
        Ok(())
    })
}
