//! `clm-feedback`: the feedback service alone, for the distributed mode.

fn main() -> std::process::ExitCode {
    clm_platform::runtime::service_main::<clm_feedback::FeedbackService>()
}
