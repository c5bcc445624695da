//! Runs one job script in a QEMU microVM and prints where the time went.
//!
//!     cargo run --example vm_job -- IMAGE_DIR CACHE_DIR 'echo hello'
//!
//! IMAGE_DIR becomes the guest's root (it needs a /bin/sh); the job's upper
//! layer lands in CACHE_DIR/last-upper. Prints the job log, then one line of
//! timings in milliseconds. The image disk is cached under the image's
//! path: after changing the image's files, use a fresh CACHE_DIR.

use std::time::Duration;

use kiln::vm::{VmJob, VmOutcome, run_job};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, cache, script] = args.as_slice() else {
        return Err("usage: vm_job IMAGE_DIR CACHE_DIR SCRIPT".into());
    };
    let mut job = VmJob::new(
        image.into(),
        format!("example:{image}"),
        format!("{script}\n"),
    );
    job.env.insert("PATH".into(), "/usr/bin:/bin".into());
    job.env.insert("HOME".into(), "/root".into());
    job.timeouts.boot = Duration::from_secs(300);
    let cache = std::path::Path::new(cache);
    let upper = cache.join("last-upper");
    if upper.exists() {
        std::fs::remove_dir_all(&upper)?;
    }
    let mut log = Vec::new();
    let result = run_job(&job, cache, &upper, &mut log, std::future::pending()).await;
    print!("{}", String::from_utf8_lossy(&log));
    let run = result?;
    let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
    let t = run.timings;
    eprintln!(
        "outcome={:?} accel={} prepare_ms={} boot_ms={} guest_boot_ms={} job_ms={} teardown_ms={} total_ms={}",
        run.outcome,
        run.accel.accel.as_str(),
        t.prepare.as_millis(),
        ms(t.boot),
        ms(t.guest_boot),
        ms(t.job),
        t.teardown.as_millis(),
        t.total.as_millis()
    );
    match run.outcome {
        VmOutcome::Exited { exit_code: 0, .. } => Ok(()),
        other => Err(format!("{other:?}").into()),
    }
}
