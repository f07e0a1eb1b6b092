//! Arbitrary and mutated PL-GRIZZLY through the whole front end — parse, expand, plan, run — on
//! a small in-memory session: no input panics, and every failure carries a position inside the
//! text.

use gobi_engine::Session;
use gobi_lang::fuzz::{arbitrary, mutated, within};
use gobi_lang::parse_script;
use proptest::prelude::*;

const SETUP: &str = "
CREATE TABLE users (id BIGINT, name STRING, active BOOLEAN);
INSERT INTO users VALUES (1, 'Ann', true), (2, 'Bo', false);
CREATE TABLE orders (id BIGINT, user_id BIGINT, status STRING, total DOUBLE);
INSERT INTO orders VALUES (1, 1, 'open', 50.0), (2, 2, 'closed', 1500.0);
let threshold = 100;
let big = FROM orders WHERE total > $threshold;
FUNCTION gross(net, rate) => net * (1 + rate);
FUNCTION tier(total DOUBLE) RETURNS STRING { if total > 1000 then return 'gold'; else return 'bronze'; end }
";

/// Runs `source` statement by statement; the first error must point inside `source`.
fn check(runtime: &tokio::runtime::Runtime, session: &Session, source: &str) -> Result<(), TestCaseError> {
    let statements = match parse_script(source) {
        Ok(statements) => statements,
        Err(e) => {
            prop_assert!(within(source, e.position.line, e.position.column), "{e} for {source:?}");
            return Ok(());
        }
    };
    for statement in &statements {
        // Writing files or changing the shared tables would make cases depend on each other.
        let text = statement.text.to_lowercase();
        if text.starts_with("copy") || text.starts_with("insert") || text.starts_with("update") || text.starts_with("drop") || text.contains("create") {
            continue;
        }
        if let Err(e) = runtime.block_on(async { session.execute(statement).await?.collect().await }) {
            let position = e.position.expect("every error has a position");
            prop_assert!(within(source, position.line, position.column), "{} at {position} for {source:?}", e.message);
            break;
        }
    }
    Ok(())
}

/// One session for all cases (setting it up is most of a case's cost); cases may add
/// variables and functions to it, which only widens what later cases meet.
fn shared() -> &'static (tokio::runtime::Runtime, Session) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, Session)> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let session = Session::in_memory();
        runtime.block_on(session.run_script(SETUP)).unwrap();
        (runtime, session)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_statements_plan_or_fail_with_a_position(source in mutated()) {
        let (runtime, session) = shared();
        check(runtime, session, &source)?;
    }

    #[test]
    fn arbitrary_text_plans_or_fails_with_a_position(source in arbitrary()) {
        let (runtime, session) = shared();
        check(runtime, session, &source)?;
    }
}
