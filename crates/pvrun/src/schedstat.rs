//! How long a host thread sat runnable on a run queue without running: the
//! scheduler's `run_delay`, field 2 of `/proc/<pid>/task/<tid>/schedstat`
//! (ns). Stolen time, for the personalities that report it (VMI's cycle
//! counters, VMware's steal clock) as KVM's own steal time does.

/// `run_delay` (ns) in the text of a `schedstat` file: "cpu_time run_delay
/// timeslices".
pub fn parse_run_delay(schedstat: &str) -> Option<u64> {
    schedstat.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The calling thread's `run_delay`, if the host keeps schedstats.
pub fn this_thread_run_delay() -> Option<u64> {
    parse_run_delay(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_delay_is_the_second_field() {
        assert_eq!(parse_run_delay("90628636 10203356 123\n"), Some(10_203_356));
        assert_eq!(parse_run_delay("1 2"), Some(2));
        assert_eq!(parse_run_delay("1"), None);
        assert_eq!(parse_run_delay("1 x 3"), None);
        assert_eq!(parse_run_delay(""), None);
    }
}
