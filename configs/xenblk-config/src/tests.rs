//! Unit tests: every error path (message and LINE:COL), the happy paths,
//! the shipped configs, and a no-panic fuzz loop.

use crate::{Config, Diagnostics, Profile, Source, Value, parse_bytes, parse_str, render_rust};

fn ok(src: &str) -> Config {
    ok_p(src, Profile::Linux)
}

fn ok_p(src: &str, p: Profile) -> Config {
    match parse_str("t.cfg", src, p) {
        Ok(c) => c,
        Err(d) => panic!("expected a valid config, got:\n{d}"),
    }
}

fn errs_p(src: &str, p: Profile) -> Diagnostics {
    match parse_str("t.cfg", src, p) {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(d) => d,
    }
}

/// The first diagnostic must be at `at` ("LINE:COL") and contain `msg`.
#[track_caller]
fn err_at(src: &str, at: &str, msg: &str) -> Diagnostics {
    err_at_p(src, Profile::Linux, at, msg)
}

#[track_caller]
fn err_at_p(src: &str, p: Profile, at: &str, msg: &str) -> Diagnostics {
    let d = errs_p(src, p);
    let first = &d.items[0];
    assert_eq!(first.line_col(), at, "wrong place for:\n{d}");
    assert!(first.message.contains(msg), "message {:?} does not contain {msg:?}\n{d}", first.message);
    // The rendered form starts with FILE:LINE:COL: message.
    assert!(d.to_string().starts_with(&format!("t.cfg:{at}: {}", first.message)), "{d}");
    d
}

fn int(c: &Config, name: &str) -> u64 {
    match c.get(name) {
        Some(Value::Int(n)) => n,
        other => panic!("`{name}` is {other:?}"),
    }
}

#[test]
fn get_reads_keys_and_derived_names() {
    let c = ok("ring.order = 3\nfrontend.persistent = no");
    assert_eq!(int(&c, "ring.order"), 3);
    assert_eq!(int(&c, "ring.slots"), 256);
    assert_eq!(int(&c, "ring.pages"), 8);
    assert_eq!(c.get("frontend.persistent"), Some(Value::Bool(false)));
    assert_eq!(c.get("nope"), None);
    assert_eq!(c.source("ring.slots"), None);
}

// ---------------------------------------------------------------- rendering

#[test]
fn renders_file_line_col_line_and_caret() {
    let d = errs_p("guests = 1\n  ring.ordr = 2 # x\n", Profile::Linux);
    assert_eq!(
        d.to_string(),
        "t.cfg:2:3: unknown key `ring.ordr`; did you mean `ring.order`?\n    \
         \x20 ring.ordr = 2 # x\n      ^"
    );
    assert_eq!(d.headline(), "t.cfg:2:3: unknown key `ring.ordr`; did you mean `ring.order`?");
}

#[test]
fn columns_count_characters_not_bytes() {
    // `é` is two bytes; the caret column counts it once.
    err_at("# é\nguests = 1 é", "2:12", "unexpected `é`");
    err_at("guests = 1 # é é\nguests = x", "2:1", "duplicate key");
}

#[test]
fn reports_several_errors_in_file_order() {
    let d = errs_p("guests = 0\nbogus = 1\nring.order = 9\n[backend]\nmax_grants = yes\n", Profile::Linux);
    let places: Vec<String> = d.items.iter().map(|i| i.line_col()).collect();
    assert_eq!(places, ["1:10", "2:1", "3:14", "5:14"], "{d}");
}

#[test]
fn caps_the_number_of_diagnostics() {
    let src = "nope = 1\n".repeat(crate::MAX_DIAGNOSTICS + 10);
    let d = errs_p(&src, Profile::Linux);
    assert_eq!(d.items.len(), crate::MAX_DIAGNOSTICS);
    assert_eq!(d.omitted, 10);
    assert!(d.to_string().ends_with("t.cfg: 10 more error(s) not shown"));
}

// ------------------------------------------------------------ syntax errors

#[test]
fn syntax_missing_equals() {
    err_at("guests 5", "1:8", "expected `=` after `guests`, found `5`");
    err_at("guests", "1:7", "expected `=` and a value after `guests`");
}

#[test]
fn syntax_missing_value() {
    err_at("guests =   ", "1:12", "missing value after `guests =`");
    err_at("guests = # nothing", "1:10", "missing value");
}

#[test]
fn syntax_dangling_operator() {
    err_at("guests = 1 +", "1:13", "expected a value at the end of the line");
    err_at("guests = 1 * * 2", "1:14", "expected a value");
}

#[test]
fn syntax_unclosed_paren() {
    err_at("guests = (1 + (2)", "1:18", "expected `)` to close the `(` at column 10");
}

#[test]
fn syntax_trailing_garbage() {
    err_at("guests = 1 2", "1:12", "unexpected `2`; expected an operator");
    err_at("guests = 1)", "1:11", "unexpected `)`");
}

#[test]
fn syntax_bad_key_and_line_start() {
    err_at("= 3", "1:1", "expected a key or a `[section]` header, found `=`");
    err_at("ring-order = 1", "1:5", "unexpected `-` in key `ring`");
    err_at("ring. = 1", "1:6", "expected a name after `.`");
    err_at("1guests = 1", "1:1", "expected a key");
}

#[test]
fn syntax_bad_section_header() {
    err_at("[ring", "1:6", "expected `]` to end the section header");
    err_at("[]", "1:2", "expected a section name after `[`");
    err_at("[ring] x", "1:8", "unexpected `x` after the section header");
}

#[test]
fn broken_section_header_does_not_cascade() {
    let d = err_at("[backend\nmax_grants = 3\nguests = 1\n", "1:9", "expected `]`");
    assert_eq!(d.items.len(), 1, "{d}");
}

#[test]
fn key_with_a_broken_value_counts_as_set() {
    // The pool's default would be out of range, but the file sets the pool
    // (on a line with a syntax error): only that error is reported.
    let d = err_at(
        "ring.order = 4\nrequest.max_segments = 4096\nfrontend.pool_grants = 4 KB\n",
        "3:26",
        "unknown size suffix `KB`",
    );
    assert_eq!(d.items.len(), 1, "{d}");
    // ... and a second setting is still a duplicate.
    let d = errs_p("guests = (\nguests = 2\n", Profile::Linux);
    assert_eq!(d.items.len(), 2, "{d}");
    assert!(d.items[1].message.contains("duplicate key `guests` (first set on line 1)"));
}

#[test]
fn syntax_fraction() {
    err_at("guests = 1.5", "1:11", "only integers are supported");
}

#[test]
fn syntax_empty_hex() {
    err_at("guests = 0x", "1:12", "expected hexadecimal digits after `0x`");
}

#[test]
fn unknown_section() {
    let d = err_at("[backnd]\nmax_grants = 3\n", "1:2", "unknown section `[backnd]`; did you mean `backend`?");
    // Lines in an unknown section are not reported again.
    assert_eq!(d.items.len(), 1, "{d}");
}

// --------------------------------------------------------------- key names

#[test]
fn unknown_key_with_suggestion() {
    err_at("ring.ordr = 1", "1:1", "unknown key `ring.ordr`; did you mean `ring.order`?");
    err_at("order = 1", "1:1", "did you mean `ring.order`?");
    err_at("persistent = no", "1:1", "did you mean `frontend.persistent` or `backend.persistent`?");
    err_at("[backend]\nmax_grant = 64", "2:1", "unknown key `backend.max_grant`; did you mean `backend.max_grants`?");
}

#[test]
fn unknown_key_without_suggestion() {
    let d = err_at("completely_different = 1", "1:1", "unknown key");
    assert!(!d.items[0].message.contains("did you mean"), "{d}");
}

#[test]
fn top_level_key_inside_section() {
    let d = err_at("[backend]\nguests = 2", "2:1", "unknown key `backend.guests`");
    assert!(d.items[0].notes[0].contains("set it before the first section header"));
    let d = err_at("[ring]\nring.order = 2", "2:1", "unknown key `ring.ring.order`");
    assert!(d.items[0].notes[0].contains("write `order` there"), "{d}");
}

#[test]
fn unknown_name_in_expression() {
    err_at("guests = gusts", "1:10", "unknown name `gusts`; did you mean `guests`?");
    err_at("guests = 1 + slots", "1:14", "did you mean `ring.slots`?");
}

#[test]
fn duplicate_key_names_first_line() {
    err_at("guests = 1\n\nguests = 2", "3:1", "duplicate key `guests` (first set on line 1)");
    err_at(
        "backend.max_grants = 1\n[backend]\n  max_grants = 2",
        "3:3",
        "duplicate key `backend.max_grants` (first set on line 1)",
    );
}

#[test]
fn derived_key_assignment() {
    let d = err_at("ring.slots = 64", "1:1", "`ring.slots` is derived and cannot be set");
    assert_eq!(d.items[0].notes, ["it is computed as `32 << ring.order`"]);
    err_at("[request]\n  indirect_pages = 1", "2:3", "`request.indirect_pages` is derived and cannot be set");
    err_at("ring.pages = 1", "1:1", "`ring.pages` is derived");
}

// --------------------------------------------------------- values and rules

#[test]
fn out_of_range() {
    err_at("guests = 0", "1:10", "`guests` = 0 is out of range (allowed: 1..=1024)");
    err_at("guests = 1025", "1:10", "allowed: 1..=1024");
    err_at("ring.order = 5", "1:14", "`ring.order` = 5 is out of range");
    err_at("ring.queues = 17", "1:15", "allowed: 1..=16");
    err_at("request.max_segments = 10", "1:24", "allowed: 11..=4096");
    err_at("request.max_segments = 4097", "1:24", "allowed: 11..=4096");
    err_at("frontend.pool_grants = 65537", "1:24", "allowed: 0..=65536");
    err_at("backend.max_grants = 65537", "1:22", "allowed: 0..=65536");
    err_at("backend.total_grants = 16 MiB + 1", "1:24", "allowed: 0..=16777216");
    err_at("backend.grant_idle_secs = 86401", "1:27", "allowed: 0..=86400");
    err_at("backend.max_indirect_segments = 16", "1:33", "allowed: 0 or 17..=4096");
}

#[test]
fn negative_for_unsigned_key() {
    err_at("guests = 2 - 3", "1:10", "`guests` must not be negative (the value is -1)");
    err_at("backend.max_grants = -1", "1:22", "must not be negative");
}

#[test]
fn default_out_of_range_points_at_the_key_it_depends_on() {
    // 512 slots * (4096 + 8) grants: too many for the default pool.
    let d = err_at(
        "ring.order = 4\nrequest.max_segments = 4096\n",
        "2:24",
        "`frontend.pool_grants` = 2101248 (its default, `ring.slots * (request.max_segments + request.indirect_pages)`) is out of range",
    );
    assert!(d.items[0].notes.iter().any(|n| n.contains("set `frontend.pool_grants` explicitly")), "{d}");
    err_at("guests = 1024\nring.queues = 16\n", "2:15", "`backend.total_grants` = 17301504 (its default");
}

#[test]
fn netbsd_profile_violations() {
    err_at_p(
        "ring.order = 1",
        Profile::Netbsd,
        "1:14",
        "`ring.order` = 1 is not allowed with profile netbsd: ring-netbsd offers a single-page ring only",
    );
    err_at_p(
        "ring.queues = 2",
        Profile::Netbsd,
        "1:15",
        "`ring.queues` = 2 is not allowed with profile netbsd: ring-netbsd offers a single queue only",
    );
    // Both fine under linux.
    let c = ok("ring.order = 1\nring.queues = 2");
    assert_eq!((c.ring_order, c.ring_queues), (1, 2));
}

#[test]
fn pool_smaller_than_one_request() {
    err_at("frontend.pool_grants = 10", "1:24", "pool smaller than one full request (needs at least 11 grants)");
    err_at(
        "request.max_segments = 600\nfrontend.pool_grants = 601",
        "2:24",
        "pool smaller than one full request (needs at least 602 grants)",
    );
    // Exactly one request is enough.
    assert_eq!(ok("frontend.pool_grants = 11").frontend_pool_grants, 11);
}

#[test]
fn overflow() {
    err_at("guests = 0xFFFF_FFFF_FFFF_FFFF * 0xFFFF_FFFF_FFFF_FFFF", "1:32", "arithmetic overflow");
    err_at("guests = 1 + 0xFFFF_FFFF_FFFF_FFFF GiB * 0xFFFF_FFFF_FFFF_FFFF GiB", "1:40", "arithmetic overflow");
    err_at("guests = 18446744073709551616", "1:10", "integer literal does not fit in 64 bits");
}

#[test]
fn division_by_zero() {
    err_at("guests = 4 / (2 - 2)", "1:12", "division by zero");
}

#[test]
fn absurd_nesting_never_overflows_the_stack() {
    // Run on a small stack: the parser must stop at MAX_DEPTH, not recurse
    // 100 000 times. (32 levels take about 330 KiB in an unoptimized build;
    // 100 000 unchecked levels would take about a GiB.)
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            let deep = |open: &str, n: usize| format!("guests = {}1", open.repeat(n));
            err_at(&deep("(", 1000), &format!("1:{}", 10 + crate::MAX_DEPTH), "expression nested too deeply");
            err_at(&deep("-", 1000), &format!("1:{}", 10 + crate::MAX_DEPTH), "expression nested too deeply");
            // Parentheses and minus signs count together: the 33rd is the
            // `(` of the 17th "( -".
            err_at(&deep("( -", 1000), "1:58", "nested too deeply");
            // 100 000 parentheses: refused by the line limit before parsing.
            err_at(&deep("(", 100_000), "1:4097", "line too long");
            // Exactly the limit is fine.
            let n = crate::MAX_DEPTH as usize;
            let src = format!("guests = {}1{}", "(".repeat(n), ")".repeat(n));
            assert_eq!(ok(&src).guests, 1);
            let src = format!("guests = {}1", "-".repeat(n));
            assert_eq!(ok(&src).guests, 1);
            let src = format!("guests = {}1", "-".repeat(n - 1));
            err_at(&src, "1:10", "must not be negative");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn long_flat_expression_is_fine_on_a_small_stack() {
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            let src = format!("guests = {}", vec!["1"; 1000].join("+"));
            assert_eq!(ok(&src).guests, 1000);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn bool_in_arithmetic() {
    err_at("guests = true + 1", "1:10", "type error: booleans cannot be used in arithmetic (`+`)");
    err_at("guests = 2 * off", "1:14", "booleans cannot be used in arithmetic (`*`)");
    err_at("guests = -yes", "1:11", "booleans cannot be used in arithmetic");
    err_at(
        "frontend.persistent = no\nguests = frontend.persistent + 1",
        "2:10",
        "booleans cannot be used in arithmetic",
    );
}

#[test]
fn value_of_the_wrong_type() {
    err_at("guests = yes", "1:10", "type error: `guests` is an integer, but the value is a boolean");
    err_at("frontend.persistent = 1", "1:23", "type error: `frontend.persistent` is a boolean");
}

#[test]
fn bad_size_suffix() {
    err_at(
        "backend.total_grants = 4 KB",
        "1:26",
        "unknown size suffix `KB` (the suffixes are `KiB`, `MiB` and `GiB`); did you mean `KiB`?",
    );
    err_at("backend.total_grants = 4mib", "1:25", "did you mean `MiB`?");
    err_at("guests = 12abc", "1:12", "unknown size suffix `abc`");
}

#[test]
fn line_too_long() {
    let src = format!("guests = 1\n#{}\n", "x".repeat(5000));
    err_at(&src, "2:4097", "line too long: 5001 bytes (the limit is 4096)");
    // A line of exactly the limit is fine.
    let src = format!("guests = 1 #{}", "x".repeat(crate::MAX_LINE_LEN - 12));
    assert_eq!(src.len(), crate::MAX_LINE_LEN);
    ok(&src);
}

#[test]
fn file_too_large() {
    // 16384 lines of 64 bytes is exactly 1 MiB; the next line is too much.
    let line = format!("#{}\n", "x".repeat(62));
    let src = line.repeat(16384) + "guests = 1\n";
    err_at(&src, "16385:1", "file too large: more than 1048576 bytes");
    ok(&line.repeat(16384));
}

#[test]
fn used_before_set() {
    let d =
        err_at("backend.max_grants = guests * 2\nguests = 3", "1:22", "`guests` is used before it is set (on line 2)");
    assert!(d.items[0].notes[0].contains("final value"));
    // Through a default that depends on a key set later.
    let d = err_at(
        "backend.max_grants = frontend.pool_grants\nrequest.max_segments = 20",
        "1:22",
        "`request.max_segments` is used before it is set (on line 2)",
    );
    assert!(d.items[0].notes.iter().any(|n| n.contains("`frontend.pool_grants` is not set in this file")), "{d}");
    // Through a derived name.
    err_at(
        "backend.max_grants = ring.slots\nring.order = 1",
        "1:22",
        "`ring.order` is used before it is set (on line 2)",
    );
    err_at("guests = guests", "1:10", "`guests` cannot be used in its own value");
    err_at("[ring]\norder = 1 / order", "2:13", "`ring.order` cannot be used in its own value");
}

#[test]
fn invalid_utf8() {
    let d = parse_bytes("t.cfg", b"guests = 1\nring.order = \xff\n", Profile::Linux).unwrap_err();
    assert_eq!(d.items[0].line_col(), "2:14", "{d}");
    assert!(d.items[0].message.contains("invalid UTF-8"));
}

#[test]
fn unreadable_file() {
    let d = crate::load(std::path::Path::new("/nonexistent/x.cfg"), Profile::Linux).unwrap_err();
    assert!(d.items[0].location.is_none());
    assert!(d.to_string().starts_with("/nonexistent/x.cfg: cannot read config file:"), "{d}");
}

#[test]
fn errors_cascade_quietly() {
    // `guests` is invalid; reading it elsewhere adds no second error.
    let d = errs_p("guests = 0\nbackend.max_grants = guests * 10\n", Profile::Linux);
    assert_eq!(d.items.len(), 1, "{d}");
    let d = errs_p("guests = nope\nbackend.max_grants = guests\n", Profile::Linux);
    assert_eq!(d.items.len(), 1, "{d}");
}

// -------------------------------------------------------------- happy paths

#[test]
fn empty_file_is_all_defaults() {
    for p in Profile::ALL {
        let c = ok_p("", p);
        assert_eq!(c.guests, 1);
        assert_eq!(c.ring_order, 0);
        assert_eq!(c.ring_queues, 1);
        assert_eq!(c.max_segments, 11);
        assert_eq!(c.frontend_pool_grants, 352);
        assert!(c.frontend_persistent);
        assert_eq!(c.backend_max_grants, 1056);
        assert_eq!(c.backend_total_grants, 1056);
        assert!(c.backend_persistent);
        assert_eq!(c.backend_grant_idle_secs, 60);
        assert_eq!(c.backend_max_indirect_segments, 256);
        assert_eq!((c.ring_pages, c.ring_slots, c.indirect_pages), (1, 32, 0));
        assert!(c.settings.iter().all(|s| s.source == Source::Default));
    }
}

#[test]
fn suffixes_and_number_forms() {
    let c = ok("backend.grant_idle_secs = 1KiB\n\
         backend.total_grants = 4 MiB\n\
         backend.max_grants = 0x1_000\n\
         frontend.pool_grants = 1_000\n\
         ring.queues = 0X0a\n\
         guests = 1 GiB / 1\tMiB\n");
    assert_eq!(c.backend_grant_idle_secs, 1024);
    assert_eq!(c.backend_total_grants, 4 << 20);
    assert_eq!(c.backend_max_grants, 4096);
    assert_eq!(c.frontend_pool_grants, 1000);
    assert_eq!(c.ring_queues, 10);
    assert_eq!(c.guests, 1024);
    assert_eq!(ok("backend.total_grants = 16 MiB").backend_total_grants, 16 << 20);
}

#[test]
fn precedence_and_associativity() {
    let g = |e: &str| ok(&format!("guests = {e}")).guests;
    assert_eq!(g("2 + 3 * 4"), 14);
    assert_eq!(g("(2 + 3) * 4"), 20);
    assert_eq!(g("20 - 4 - 3"), 13);
    assert_eq!(g("100 / 10 / 5"), 2);
    assert_eq!(g("7 / 2"), 3);
    assert_eq!(g("-2 * -3"), 6);
    assert_eq!(g("10 - 2 * 3"), 4);
    assert_eq!(g("- -3 + 5"), 8);
    assert_eq!(g("-(1 - 10)"), 9);
    assert_eq!(g("2*3+4*5"), 26);
    assert_eq!(g("((((7))))"), 7);
    assert_eq!(g("-7 / 2 + 10"), 7); // truncates toward zero: -3 + 10
}

#[test]
fn sections_and_relative_names() {
    let c = ok("guests = 4\n\
         [backend]\n\
         max_grants = 64          # backend.max_grants\n\
         total_grants = max_grants * guests  # section first, then top level\n\
         persistent = off\n\
         [ring]\n\
         order = 1\n\
         [frontend]\n\
         pool_grants = ring.slots * 11\n\
         persistent = yes\n");
    assert_eq!(c.backend_max_grants, 64);
    assert_eq!(c.backend_total_grants, 256);
    assert!(!c.backend_persistent);
    assert_eq!(c.ring_order, 1);
    assert_eq!(c.frontend_pool_grants, 64 * 11);
    assert!(c.frontend_persistent);
    assert_eq!(c.source("backend.max_grants"), Some(Source::File { line: 3 }));
    assert_eq!(c.source("guests"), Some(Source::File { line: 1 }));
    assert_eq!(c.source("ring.queues"), Some(Source::Default));
}

#[test]
fn section_header_with_spaces_and_comment() {
    let c = ok("[ backend ]   # the backend\nmax_grants=5\n");
    assert_eq!(c.backend_max_grants, 5);
}

#[test]
fn references_and_derived_names() {
    let c = ok("request.max_segments = 1024\n\
         frontend.pool_grants = ring.slots * (request.max_segments + request.indirect_pages)\n");
    assert_eq!(c.indirect_pages, 2);
    assert_eq!(c.frontend_pool_grants, 32 * 1026);
    let c = ok("request.max_segments = 12");
    assert_eq!(c.indirect_pages, 1);
    let c = ok("request.max_segments = 513");
    assert_eq!(c.indirect_pages, 2);
    // A key the file never sets stands for its default.
    let c = ok("backend.max_grants = ring.slots * request.max_segments");
    assert_eq!(c.backend_max_grants, 352);
    // Derived names follow earlier settings.
    let c = ok("ring.order = 2\nbackend.max_grants = ring.slots * 2 + ring.pages");
    assert_eq!(c.backend_max_grants, 128 * 2 + 4);
}

#[test]
fn defaults_follow_final_values_of_other_keys() {
    let c = ok("guests = 3\nring.queues = 2\nbackend.max_grants = 100\nring.order = 2\n");
    assert_eq!(c.backend_total_grants, 600);
    assert_eq!(c.frontend_pool_grants, 128 * 11);
    assert_eq!(c.source("backend.total_grants"), Some(Source::Default));
    // Order in the file does not matter for defaults.
    let c = ok("backend.max_grants = 100\nguests = 3\n");
    assert_eq!(c.backend_total_grants, 300);
    // A default read in an expression is the same final value.
    let c = ok("guests = 2\nbackend.max_grants = 10\nbackend.grant_idle_secs = backend.total_grants");
    assert_eq!(c.backend_grant_idle_secs, 20);
}

#[test]
fn booleans_and_bool_references() {
    for (w, v) in [("true", true), ("false", false), ("yes", true), ("no", false), ("on", true), ("off", false)] {
        assert_eq!(ok(&format!("frontend.persistent = {w}")).frontend_persistent, v);
    }
    let c = ok("frontend.persistent = off\nbackend.persistent = frontend.persistent");
    assert!(!c.backend_persistent);
}

#[test]
fn comments_blank_lines_crlf_and_tabs() {
    let c = ok("# a comment\r\n\r\n\tguests\t=\t2\t# trailing\r\n   \r\n[ring] # c\r\norder = 1#x\r\n");
    assert_eq!(c.guests, 2);
    assert_eq!(c.ring_order, 1);
    assert_eq!(c.source("ring.order"), Some(Source::File { line: 6 }));
}

#[test]
fn netbsd_accepts_single_page_single_queue() {
    let c = ok_p("ring.order = 0\nring.queues = 1\nbackend.max_indirect_segments = 17", Profile::Netbsd);
    assert_eq!(c.profile, Profile::Netbsd);
    assert_eq!(c.backend_max_indirect_segments, 17);
}

#[test]
fn footprint_formula() {
    let c = ok("");
    let terms = c.footprint();
    let bytes: Vec<u64> = terms.iter().map(|t| t.2).collect();
    assert_eq!(bytes, [4096, 352 * 4096, 352 * 16, 32 * 128, 1056 * 32]);
    assert_eq!(c.static_footprint_bytes(), bytes.iter().sum::<u64>());
    // The backend term is capped by the total budget.
    let c = ok("guests = 4\nbackend.total_grants = 100");
    assert_eq!(c.footprint()[4].2, 100 * 32);
}

#[test]
fn generated_rust() {
    let c = ok("guests = 15\n\n[backend]\nmax_grants = 352\n");
    let rs = render_rust(&c);
    for want in [
        "pub const CONFIG_FILE: &str = \"t.cfg\";",
        "pub const PROFILE: &str = \"linux\";",
        "pub const GUESTS: usize = 15;",
        "pub const RING_ORDER: u32 = 0;",
        "pub const RING_PAGES: usize = 1;",
        "pub const RING_SLOTS: usize = 32;",
        "pub const RING_QUEUES: usize = 1;",
        "pub const MAX_SEGMENTS: usize = 11;",
        "pub const INDIRECT_PAGES: usize = 0;",
        "pub const FRONTEND_POOL_GRANTS: usize = 352;",
        "pub const FRONTEND_PERSISTENT: bool = true;",
        "pub const BACKEND_MAX_GRANTS: usize = 352;",
        "pub const BACKEND_TOTAL_GRANTS: usize = 5280;",
        "pub const BACKEND_PERSISTENT: bool = true;",
        "pub const BACKEND_GRANT_IDLE_SECS: u32 = 60;",
        "pub const BACKEND_MAX_INDIRECT_SEGMENTS: usize = 256;",
        "/// Value set in `t.cfg:1`.\npub const GUESTS",
        "/// Value set in `t.cfg:4`.\npub const BACKEND_MAX_GRANTS",
        "/// Value: the default.\npub const RING_ORDER",
        "/// Value: the default, `guests * ring.queues * backend.max_grants`.\npub const BACKEND_TOTAL_GRANTS",
        "/// Derived: `32 << ring.order`.\npub const RING_SLOTS",
        &format!("pub const STATIC_FOOTPRINT_BYTES: usize = {};", c.static_footprint_bytes()),
    ] {
        assert!(rs.contains(want), "missing {want:?} in:\n{rs}");
    }
    // Every constant has a doc comment right above it.
    let lines: Vec<&str> = rs.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("pub const") {
            assert!(lines[i - 1].starts_with("///"), "undocumented: {l}");
        }
    }
    assert_eq!(rs.matches("pub const").count(), 3 + 11 + 3);
}

#[test]
fn explain_lists_everything() {
    let c = ok("guests = 2\n");
    let text = crate::explain(&c);
    for k in crate::keys::KEYS {
        assert!(text.contains(k.name), "{}", k.name);
    }
    for d in crate::keys::DERIVED {
        assert!(text.contains(d.name), "{}", d.name);
    }
    assert!(text.contains("t.cfg:1"));
    assert!(text.contains("static memory footprint (bytes)"));
    assert!(text.contains(&c.static_footprint_bytes().to_string()));
}

#[test]
fn table_defaults_are_valid_and_named_consistently() {
    use crate::keys::{DERIVED, KEYS};
    for k in KEYS {
        crate::syntax::expression(k.default).expect(k.name);
        assert_eq!(k.const_name.to_ascii_uppercase(), k.const_name, "{}", k.name);
        assert!(k.kind == crate::keys::Kind::Bool || !k.allowed.is_empty());
    }
    for d in DERIVED {
        for dep in d.deps {
            assert!(crate::keys::key_index(dep).is_some(), "{dep}");
        }
    }
}

// ----------------------------------------------------------- shipped files

fn shipped(name: &str) -> (String, String) {
    let path = format!("{}/../{name}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (format!("configs/{name}"), src)
}

#[test]
fn shipped_configs() {
    let load = |name: &str, p: Profile| {
        let (n, src) = shipped(name);
        parse_str(&n, &src, p).unwrap_or_else(|d| panic!("{d}"))
    };
    for name in ["default.cfg", "guests-15.cfg", "netbsd.cfg", "embedded-small.cfg"] {
        load(name, Profile::Linux);
    }
    for name in ["default.cfg", "netbsd.cfg"] {
        load(name, Profile::Netbsd);
    }
    let d = load("default.cfg", Profile::Linux);
    assert_eq!((d.guests, d.ring_pages, d.frontend_pool_grants), (1, 1, 352));
    let g = load("guests-15.cfg", Profile::Linux);
    assert_eq!(g.guests, 15);
    assert_eq!(g.ring_pages, 1);
    assert_eq!(g.max_segments, 11);
    assert_eq!(g.backend_max_grants, 352);
    assert_eq!(g.backend_total_grants, 15 * 352);
    let n = load("netbsd.cfg", Profile::Netbsd);
    assert_eq!((n.ring_order, n.ring_queues), (0, 1));
    assert!(n.backend_max_indirect_segments >= 17);
    let e = load("embedded-small.cfg", Profile::Linux);
    assert_eq!(e.frontend_pool_grants, e.grants_per_request());
    assert_eq!(e.guests, 1);
    assert!(e.static_footprint_bytes() < d.static_footprint_bytes() / 4);
}

#[test]
fn reference_md_is_up_to_date() {
    let (_, on_disk) = shipped("REFERENCE.md");
    let fresh = crate::reference_markdown();
    assert!(
        on_disk == fresh,
        "configs/REFERENCE.md is stale: run `cargo run -p xenblk-config -- reference > configs/REFERENCE.md`"
    );
}

// ------------------------------------------------------------------- fuzzing

/// Rounds per fuzz test: `XENBLK_CONFIG_FUZZ_ROUNDS` or `default`.
fn fuzz_rounds(default: usize) -> usize {
    std::env::var("XENBLK_CONFIG_FUZZ_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: enough randomness for a no-panic loop, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..fuzz_rounds(3000) {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = parse_bytes("fuzz.cfg", &bytes, Profile::Linux);
        // Errors always render.
        if let Err(d) = parse_bytes("fuzz.cfg", &bytes, Profile::Netbsd) {
            let _ = d.to_string();
        }
    }
}

#[test]
fn random_token_soup_never_panics() {
    const TOKENS: &[&str] = &[
        "guests",
        "ring.order",
        "ring.slots",
        "request.max_segments",
        "frontend.pool_grants",
        "backend.max_grants",
        "backend.total_grants",
        "frontend.persistent",
        "[backend]",
        "[ring]",
        "[nope]",
        "max_grants",
        "order",
        "=",
        "=",
        "+",
        "-",
        "*",
        "/",
        "(",
        ")",
        "0",
        "1",
        "11",
        "0x",
        "0xFFFF_FFFF_FFFF_FFFF",
        "4",
        "KiB",
        "MiB",
        "GiB",
        "KB",
        "yes",
        "off",
        "#",
        " ",
        " ",
        "\t",
        "\n",
        "\n",
        "\n",
        "\r\n",
        ".",
        "_",
        "é",
        "[",
        "]",
        "99999999999999999999",
    ];
    let mut rng = Rng(12345);
    for _ in 0..fuzz_rounds(3000) {
        let n = rng.below(60);
        let src: String = (0..n).map(|_| TOKENS[rng.below(TOKENS.len())]).collect();
        for p in Profile::ALL {
            match parse_str("soup.cfg", &src, p) {
                Ok(c) => {
                    let _ = render_rust(&c);
                    let _ = crate::explain(&c);
                }
                Err(d) => {
                    assert!(!d.items.is_empty());
                    // Every error says something specific.
                    assert!(d.items.iter().all(|i| i.message != "syntax error"), "generic error for {src:?}:\n{d}");
                    let _ = d.to_string();
                }
            }
        }
    }
}

#[test]
fn mutated_shipped_configs_never_panic() {
    let (_, base) = shipped("default.cfg");
    let base = base.into_bytes();
    let mut rng = Rng(777);
    for _ in 0..fuzz_rounds(1000) {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(6) {
            if b.is_empty() {
                b.push(b'#');
            }
            let i = rng.below(b.len());
            match rng.below(3) {
                0 => b[i] = rng.next() as u8,
                1 => {
                    b.remove(i);
                }
                _ => b.insert(i, b"()+-*/=#[]0x_.\n "[rng.below(16)]),
            }
        }
        let _ = parse_bytes("mut.cfg", &b, Profile::Linux).map_err(|d| d.to_string());
    }
}
