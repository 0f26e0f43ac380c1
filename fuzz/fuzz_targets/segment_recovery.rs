//! Any bytes as the only segment of a partition: recovery must not panic and must leave a log
//! that accepts an append at its end.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join("00000000000000000000.log"), data).is_err() {
        return;
    }
    let config = ferry::log::LogConfig { preallocate: false, ..Default::default() };
    let Ok((mut log, _)) = ferry::log::PartitionLog::open(dir.path(), config, ferry::Clock::system()) else {
        return;
    };
    let end = log.log_end_offset();
    let mut batch = ferry::log::batch::encode_batch(&[ferry::log::batch::SimpleRecord {
        key: None,
        value: Some(bytes::Bytes::from_static(b"x")),
        headers: vec![],
        timestamp: 1,
    }]);
    let info = log.append(&mut batch).expect("a recovered log accepts appends");
    assert_eq!(info.base_offset, end);
});
