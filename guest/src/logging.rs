//! Log lines to stderr (the guest console when PID 1), prefixed so the shim can pick them out of
//! the console log.

struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            // The guest's uptime, like the kernel's own lines: boot and request timings at a glance.
            eprintln!(
                "kata-cc-agent: [{}] {}: {}",
                kata_cc_guest::uptime_text(),
                r.level(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

pub fn init() {
    let level = match std::env::var("KATA_CC_AGENT_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
