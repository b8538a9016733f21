//! Records one report: `own-table-example <service> <status>`, against `DATABASE_URL`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [service, status] = args.as_slice() else {
        eprintln!("usage: own-table-example <service> <up|degraded|down>  (DATABASE_URL names the server)");
        return ExitCode::from(2);
    };
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("own-table-example: set DATABASE_URL=postgres://…");
        return ExitCode::from(2);
    };
    let run = || -> upsert_kit::Result<upsert_kit::UpsertOutcome> {
        let mut conn = upsert_kit::db::connect_pg(&url)?;
        own_table_example::migrate(&mut conn)?;
        let now = chrono::Utc::now().naive_utc();
        own_table_example::report(
            &mut conn,
            &own_table_example::Report {
                service: service.clone(),
                status: status.clone(),
                reported_at: now,
                first_seen: now,
            },
        )
    };
    match run() {
        Ok(outcome) => {
            println!("{service}: {outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("own-table-example: {e}");
            ExitCode::FAILURE
        }
    }
}
