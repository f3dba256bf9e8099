//! The demo path a newcomer takes: `clm seed` fills a real `clm serve` (SQLite) through the
//! public gRPC API, then `clm report` writes the HTML page. The page must show every chart with
//! every row labelled, figures with units, and the goals with their period and pro-rated
//! expectation.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{ClmProcess, clm_binary};

const CONTACTS: usize = 120;

/// Run `clm <args>` as the CLI a person would, against `addr`.
fn clm(args: &[&str]) -> Output {
    Command::new(clm_binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CLM_CONFIG_DIR", "/nonexistent")
        .output()
        .expect("run clm")
}

/// The texts of the `<text class="l">` row labels of one chart.
fn row_labels<'a>(page: &'a str, chart: &str) -> Vec<&'a str> {
    let svg = page.split(&format!(r#"aria-label="{chart}">"#)).nth(1).expect(chart);
    let svg = &svg[..svg.find("</svg>").expect("svg end")];
    svg.split(r#"class="l">"#).skip(1).map(|t| &t[..t.find("</text>").expect("text end")]).collect()
}

#[test]
fn seed_then_report_shows_every_chart_labelled() {
    let server = ClmProcess::start(&[]);
    let addr = server.addr.to_string();
    let seeded = clm(&["seed", "--addr", &addr, "--contacts", &CONTACTS.to_string(), "--seed-value", "7"]);
    let said = String::from_utf8_lossy(&seeded.stdout);
    assert!(seeded.status.success(), "seed failed: {said}{}", String::from_utf8_lossy(&seeded.stderr));
    assert!(said.contains(&format!("seeded tenant dev: {CONTACTS} contacts")), "{said}");
    assert!(said.contains("3 campaigns"), "{said}");

    // Metrics reads events asynchronously: report until the page stops changing with every
    // contact in the funnel (the demo acquires contacts up to 366 days back; 400 covers them).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.html");
    let out_arg = out.to_str().unwrap();
    let started = Instant::now();
    let mut previous = String::new();
    let page = loop {
        let run = clm(&["report", "--addr", &addr, "--days", "400", "-o", out_arg]);
        assert!(run.status.success(), "report failed: {}", String::from_utf8_lossy(&run.stderr));
        // The footer names the minute it was generated; compare the rest.
        let page = std::fs::read_to_string(&out).unwrap();
        let body = page[..page.rfind("Generated").unwrap()].to_owned();
        if body.contains(&format!("{CONTACTS} contacts · 100.0%")) && body == previous {
            break page;
        }
        previous = body;
        assert!(started.elapsed() < Duration::from_mins(2), "metrics did not settle in 2 minutes:\n{page}");
        std::thread::sleep(Duration::from_secs(2));
    };

    for chart in ["Funnel", "Cohort retention", "NPS trend", "CAC by channel"] {
        assert!(page.contains(&format!(r#"aria-label="{chart}""#)), "{chart} drawn");
    }
    let funnel = row_labels(&page, "Funnel");
    assert_eq!(funnel[..3], ["Awareness", "Acquisition", "Conversion"], "stages labelled in model order");
    let channels = row_labels(&page, "CAC by channel");
    assert!(channels.len() >= 3, "{channels:?}");
    assert!(channels.iter().all(|c| !c.trim().is_empty()), "every channel row is labelled: {channels:?}");
    assert!(!row_labels(&page, "Cohort retention").is_empty(), "cohorts of first purchases");
    assert!(page.contains(" per customer · "), "CAC with its unit");
    assert!(page.contains(" EUR"), "money with its currency");
    assert!(page.contains(">n="), "NPS months say how many answers");
    // The seeded answers are dated after the purchases they follow, over the year: the NPS
    // trend has points in many months, not one.
    let nps = page.split(r#"aria-label="NPS trend">"#).nth(1).expect("NPS trend");
    let nps = &nps[..nps.find("</svg>").expect("svg end")];
    let answered = nps
        .split(">n=")
        .skip(1)
        .filter(|t| t[..t.find('<').expect("n end")].parse::<u64>().expect("n is a count") > 0)
        .count();
    assert!(answered >= 6, "NPS answers in {answered} months only:\n{nps}");
    // Every headline tile has a value, and no figure is left as a bare dash.
    let tiles: Vec<&str> =
        page.split(r#"<div class="tile"><span>"#).skip(1).map(|t| t.split("<b>").nth(1).unwrap()).collect();
    assert_eq!(tiles.len(), 12);
    assert!(tiles.iter().all(|t| !t.starts_with("</b>")), "every tile has a value");
    assert!(!page.contains(">—<"), "no blank figure");
    // The four demo goals, each with its period, elapsed share and expectation.
    for goal in ["New contacts per month", "Close rate per quarter", "CAC per month", "NPS per month"] {
        let row = page.split(&format!("<tr><td>{goal}</td>")).nth(1).unwrap_or_else(|| panic!("{goal} row"));
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(row.contains("% elapsed)") && (row.contains("at least") || row.contains("at most")), "{goal}: {row}");
    }
    assert!(page.contains("pro-rated by the elapsed share of the period"));

    // The demo campaigns acted: with no SMTP relay (the development profile), their emails are
    // files in data/mailbox, one per delivery, personalised, each with its unsubscribe link.
    let mailbox = server.dir().join("data/mailbox");
    let subjects = |prefix: &str| -> usize {
        let Ok(entries) = std::fs::read_dir(&mailbox) else { return 0 };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter(|eml| eml.lines().any(|l| l.starts_with(&format!("Subject: {prefix}"))))
            .inspect(|eml| assert!(eml.contains("List-Unsubscribe: <http://"), "{eml}"))
            .count()
    };
    let started = Instant::now();
    let win_back = |mailbox: &std::path::Path| -> usize {
        let Ok(entries) = std::fs::read_dir(mailbox) else { return 0 };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter(|eml| eml.lines().any(|l| l.starts_with("Subject: ") && l.ends_with(", it has been a while")))
            .count()
    };
    while subjects("Welcome to Demo Shop, ") == 0
        || subjects("Thank you for recommending us") == 0
        || win_back(&mailbox) == 0
    {
        assert!(started.elapsed() < Duration::from_mins(2), "a demo campaign sent nothing into {}", mailbox.display());
        std::thread::sleep(Duration::from_secs(1));
    }
    // Seeding the tenant again adds contacts, not a second set of campaigns.
    let again = clm(&["seed", "--addr", &addr, "--contacts", "5", "--seed-value", "8"]);
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success() && said.contains("its demo campaigns kept"), "{said}");
}
