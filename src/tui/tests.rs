//! Snapshot tests of every view at 80×24 and 120×40 from a fixed event list and a fixed clock, and
//! key handling driven through [`handle_key`].

use std::sync::Arc;

use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;

use super::*;
use crate::events::{CacheState, Detail, Phase, RequestEvent};

/// 2026-01-02 10:00:00 UTC.
const T0: u64 = 1_767_348_000_000;

fn ev(seq: u64, phase: Phase, at_s: u64) -> RequestEvent {
    RequestEvent {
        seq,
        phase,
        time_ms: T0 + at_s * 1000,
        request_id: format!("req-{seq:04}"),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        provider: Some("openai".into()),
        model: Some("gpt-4o-mini".into()),
        status: 200,
        cache: None,
        cache_key: None,
        latency_us: None,
        ttfb_us: None,
        upstream_us: None,
        bytes_in: 120,
        bytes_out: 480,
        outcome: None,
        error: None,
        tokens_in: None,
        tokens_out: None,
        cost_micro_usd: None,
        saved_micro_usd: None,
        prompt_cache_saved_micro_usd: None,
        tokens_cached: None,
        unpriced: false,
        attempts: Vec::new(),
        session: None,
        key: None,
        tokens_live: None,
        detail: None,
    }
}

fn done(mut e: RequestEvent, latency_ms: u64, cache: Option<CacheState>) -> RequestEvent {
    e.phase = Phase::End;
    e.latency_us = Some(latency_ms * 1000);
    e.ttfb_us = Some(latency_ms * 1000 * 3 / 4);
    e.upstream_us = (cache != Some(CacheState::Hit)).then_some(latency_ms * 1000 / 2);
    e.cache = cache;
    e.cache_key = cache.map(|_| "3f9a1c0b7d2e".to_string());
    e.outcome = Some("complete".into());
    e
}

fn stream_detail() -> Detail {
    Detail {
        request_headers: vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), "Bearer ***".into()),
        ],
        request_body: r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#.into(),
        request_truncated: false,
        response_headers: vec![
            ("content-type".into(), "text/event-stream".into()),
            ("x-relay-cache".into(), "MISS".into()),
        ],
        response_body: "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\ndata: [DONE]\n\n".into(),
        response_truncated: false,
    }
}

/// A fixed session: OpenAI and Anthropic calls, a hit, errors, one stream still running.
fn events() -> Vec<RequestEvent> {
    let mut out = Vec::new();
    for i in 0..12u64 {
        let mut e = ev(i + 1, Phase::End, i * 2);
        let (model, provider) = match i % 3 {
            0 => ("gpt-4o-mini", "openai"),
            1 => ("claude-sonnet-4-5", "anthropic"),
            _ => ("gpt-4o", "openai"),
        };
        e.model = Some(model.into());
        e.provider = Some(provider.into());
        if provider == "anthropic" {
            e.path = "/v1/messages".into();
        }
        let cache = match i % 4 {
            0 => Some(CacheState::Miss),
            1 => Some(CacheState::Hit),
            2 => None,
            _ => Some(CacheState::Bypass),
        };
        let mut e = done(e, 40 + i * 37, cache);
        e.tokens_in = Some(900 + i * 100);
        e.tokens_out = Some(20 + i * 5);
        e.cost_micro_usd = Some(if cache == Some(CacheState::Hit) {
            0
        } else {
            1_250 + i * 10
        });
        e.saved_micro_usd = (cache == Some(CacheState::Hit)).then_some(1_300);
        if i == 5 {
            e.status = 429;
        }
        if i == 9 {
            e.status = 502;
            e.error = Some("upstream_unreachable".into());
            e.upstream_us = None;
        }
        if i == 0 {
            e.detail = Some(Box::new(stream_detail()));
        }
        out.push(e);
    }
    // A stream still running.
    let mut running = ev(13, Phase::Start, 25);
    running.cache = Some(CacheState::Miss);
    out.push(running);
    out
}

/// The row of request `seq` (a copy).
fn row(s: &State, seq: u64) -> super::state::Row {
    s.visible()
        .into_iter()
        .find(|r| r.ev.seq == seq)
        .cloned()
        .unwrap()
}

fn state(w: u16, h: u16) -> State {
    let mut s = State::new("listening on 127.0.0.1:8080", "http://127.0.0.1:8080");
    s.log_path = Some("/home/dev/.local/share/relay/tui.log".into());
    s.update(Msg::Resize(w, h));
    s.update(Msg::Tick(T0 + 26_500));
    for e in events() {
        s.update(Msg::Event(Arc::new(e)));
    }
    s
}

fn draw(s: &State) -> String {
    let (w, h) = s.size;
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render(s, f)).unwrap();
    t.backend().to_string()
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

const SIZES: [(u16, u16); 2] = [(80, 24), (120, 40)];

#[test]
fn main_view() {
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("main_{w}x{h}"), draw(&state(w, h)));
    }
}

#[test]
fn detail_view() {
    for (w, h) in SIZES {
        let mut s = state(w, h);
        handle_key(&mut s, key('g'));
        assert_eq!(handle_key(&mut s, code(KeyCode::Enter)), None);
        assert_eq!(s.view, View::Detail);
        insta::assert_snapshot!(format!("detail_{w}x{h}"), draw(&s));
        // G shows the end: the stream's events, the last line on the last row above the status bar.
        handle_key(&mut s, key('G'));
        let screen = draw(&s);
        let lines: Vec<&str> = screen.lines().collect();
        let bottom = s.detail_scroll;
        assert!(screen.contains("data: [DONE]"), "{screen}");
        if h == 24 {
            assert!(bottom > 0);
            assert!(lines[lines.len() - 2].contains("data: [DONE]"), "{screen}");
        }
        handle_key(&mut s, key('j'));
        assert_eq!(s.detail_scroll, bottom, "j stops at the end");
        handle_key(&mut s, key('k'));
        assert_eq!(s.detail_scroll, bottom.saturating_sub(1));
    }
}

#[test]
fn filter_view() {
    for (w, h) in SIZES {
        let mut s = state(w, h);
        handle_key(&mut s, key('/'));
        for c in "model:gpt-4o cache:miss".chars() {
            handle_key(&mut s, key(c));
        }
        insta::assert_snapshot!(format!("filter_typing_{w}x{h}"), draw(&s));
        handle_key(&mut s, code(KeyCode::Enter));
        assert!(s.filter_input.is_none());
        assert!(s
            .visible()
            .iter()
            .all(|r| r.ev.cache == Some(CacheState::Miss)
                && r.ev.model.as_deref().unwrap().starts_with("gpt-4o")));
        insta::assert_snapshot!(format!("filter_{w}x{h}"), draw(&s));
    }
}

#[test]
fn help_view() {
    for (w, h) in SIZES {
        let mut s = state(w, h);
        handle_key(&mut s, key('?'));
        assert_eq!(s.view, View::Help);
        insta::assert_snapshot!(format!("help_{w}x{h}"), draw(&s));
        handle_key(&mut s, code(KeyCode::Esc));
        assert_eq!(s.view, View::Main);
    }
}

#[test]
fn breakdown_view() {
    for (w, h) in SIZES {
        let mut s = state(w, h);
        handle_key(&mut s, code(KeyCode::Tab));
        assert_eq!(s.view, View::Models);
        insta::assert_snapshot!(format!("models_{w}x{h}"), draw(&s));
        handle_key(&mut s, code(KeyCode::Tab));
        assert_eq!(s.view, View::Main);
    }
}

#[test]
fn selection_does_not_jump_while_rows_arrive() {
    let mut s = state(80, 24);
    handle_key(&mut s, key('k'));
    handle_key(&mut s, key('k'));
    let picked = s.selected_row().unwrap().ev.seq;
    let offset = s.offset;
    for i in 0..40 {
        let e = done(ev(100 + i, Phase::End, 26), 10, None);
        s.update(Msg::Event(Arc::new(e)));
    }
    assert_eq!(s.selected_row().unwrap().ev.seq, picked);
    assert_eq!(s.offset, offset);
    // G follows the newest again.
    handle_key(&mut s, key('G'));
    assert_eq!(s.selected_row().unwrap().ev.seq, 139);
    s.update(Msg::Event(Arc::new(done(
        ev(140, Phase::End, 26),
        10,
        None,
    ))));
    assert_eq!(s.selected_row().unwrap().ev.seq, 140);
}

#[test]
fn an_end_event_completes_its_in_flight_row() {
    let mut s = state(80, 24);
    assert_eq!(s.in_flight(), 1);
    let rows = s.len();
    // Sent upstream (status 0), then its headers: one row, updated in place.
    let mut sent = ev(14, Phase::Start, 26);
    sent.status = 0;
    s.update(Msg::Event(Arc::new(sent)));
    assert!(draw(&s).contains(" … "));
    s.update(Msg::Event(Arc::new(ev(14, Phase::Start, 26))));
    assert_eq!(s.len(), rows + 1);
    assert_eq!(s.in_flight(), 2);
    s.update(Msg::Event(Arc::new(done(
        ev(14, Phase::Start, 26),
        5,
        None,
    ))));
    assert_eq!(s.len(), rows + 1);
    assert_eq!(s.in_flight(), 1);
    let rows = s.len();
    s.update(Msg::Event(Arc::new(done(
        ev(13, Phase::Start, 25),
        1500,
        Some(CacheState::Miss),
    ))));
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.len(), rows);
    assert!(!s.visible().last().unwrap().in_flight());
}

#[test]
fn a_request_whose_end_may_have_been_dropped_is_unknown_not_in_flight_forever() {
    let mut s = state(120, 40);
    s.update(Msg::Event(Arc::new(ev(20, Phase::Start, 26))));
    s.update(Msg::Event(Arc::new(ev(21, Phase::Start, 26))));
    assert_eq!(s.in_flight(), 3, "the fixture's one and two more");
    let rows = s.len();
    // The feed dropped events: some of these may have ended unseen.
    s.update(Msg::Lagged(5));
    assert_eq!(s.in_flight(), 0);
    let r20 = row(&s, 20);
    assert!(r20.unsure && !r20.in_flight());
    let detail = format!("{:?}", super::view::detail_text(&r20));
    assert!(detail.contains("end not seen"), "{detail}");
    // An end that does come completes its row; a second start puts its row back in flight.
    s.update(Msg::Event(Arc::new(done(
        ev(20, Phase::Start, 26),
        7,
        None,
    ))));
    s.update(Msg::Event(Arc::new(ev(21, Phase::Start, 26))));
    assert_eq!(s.len(), rows, "no new rows");
    assert!(!row(&s, 20).unsure && row(&s, 20).ev.phase == Phase::End);
    assert!(row(&s, 21).in_flight());
    assert_eq!(s.in_flight(), 1);
    assert_eq!(s.totals.requests, {
        let mut fresh = state(120, 40);
        fresh.update(Msg::Event(Arc::new(done(
            ev(20, Phase::Start, 26),
            7,
            None,
        ))));
        fresh.totals.requests
    });

    // Dropped while paused: applied on resume, after the held events.
    s.update(Msg::Event(Arc::new(ev(22, Phase::Start, 27))));
    handle_key(&mut s, key('p'));
    assert!(s.paused);
    s.update(Msg::Event(Arc::new(ev(23, Phase::Start, 27))));
    s.update(Msg::Lagged(1));
    assert_eq!(s.in_flight(), 2, "nothing changes while paused");
    handle_key(&mut s, key('p'));
    assert_eq!(s.in_flight(), 0);
    assert!(row(&s, 23).unsure);
}

#[test]
fn keys_move_pause_clear_sort_and_quit() {
    let mut s = state(80, 24);
    assert!(s.follow);
    handle_key(&mut s, key('g'));
    assert_eq!(s.selected_row().unwrap().ev.seq, 1);
    handle_key(&mut s, key('j'));
    handle_key(&mut s, code(KeyCode::Down));
    assert_eq!(s.selected_row().unwrap().ev.seq, 3);
    handle_key(&mut s, code(KeyCode::PageDown));
    assert_eq!(s.selected_row().unwrap().ev.seq, 13);
    handle_key(&mut s, code(KeyCode::PageUp));
    assert_eq!(s.selected_row().unwrap().ev.seq, 1);

    handle_key(&mut s, key('p'));
    assert!(s.paused);
    s.update(Msg::Event(Arc::new(done(ev(50, Phase::End, 26), 10, None))));
    assert_eq!(s.len(), 13);
    handle_key(&mut s, key('p'));
    assert_eq!(s.len(), 14);

    handle_key(&mut s, key('s'));
    assert_eq!(s.sort, state::Sort::LatencyDesc);
    let lat: Vec<_> = s.visible().iter().map(|r| r.ev.latency_us).collect();
    assert!(lat.windows(2).all(|w| w[0] >= w[1]), "{lat:?}");

    handle_key(&mut s, key('z'));
    assert_eq!(s.len(), 0);
    assert_eq!(s.totals.requests, 0);

    assert_eq!(handle_key(&mut s, key('q')), Some(Command::Quit));
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    s.view = View::Detail;
    assert_eq!(handle_key(&mut s, ctrl_c), Some(Command::Quit));
    // q in a sub-view goes back rather than quitting.
    assert_eq!(handle_key(&mut s, key('q')), None);
    assert_eq!(s.view, View::Main);
}

#[test]
fn export_and_replay_the_selected_request() {
    let mut s = state(80, 24);
    handle_key(&mut s, key('g'));
    match handle_key(&mut s, key('e')) {
        Some(Command::Export { request_id, curl }) => {
            assert_eq!(request_id, "req-0001");
            assert!(curl.starts_with("curl -X POST 'http://127.0.0.1:8080/v1/chat/completions'"));
            assert!(curl.contains("authorization: Bearer ***"));
        }
        other => panic!("{other:?}"),
    }
    assert!(s.popup.is_some());
    insta::assert_snapshot!("export_80x24", draw(&s));
    handle_key(&mut s, key('x'));
    assert!(s.popup.is_none());
    match handle_key(&mut s, key('r')) {
        Some(Command::Replay(r)) => {
            assert_eq!(r.path, "/v1/chat/completions");
            assert!(r.headers.iter().all(|(k, _)| k != "authorization"));
        }
        other => panic!("{other:?}"),
    }
    // A request captured without detail cannot be replayed: the status bar says why.
    handle_key(&mut s, key('j'));
    assert_eq!(handle_key(&mut s, key('r')), None);
    assert!(s.status.as_deref().unwrap().starts_with("cannot replay"));
}

#[test]
fn every_action_has_a_key_and_help() {
    use keys::{Action, BINDINGS};
    for a in [
        Action::Down,
        Action::Up,
        Action::Top,
        Action::Bottom,
        Action::PageDown,
        Action::PageUp,
        Action::Open,
        Action::Back,
        Action::Quit,
        Action::Filter,
        Action::Pause,
        Action::Clear,
        Action::Sort,
        Action::NextView,
        Action::Export,
        Action::Replay,
        Action::Help,
    ] {
        assert!(BINDINGS.iter().any(|b| b.action == a), "{a:?}");
    }
    let help = draw(&{
        let mut s = state(120, 40);
        s.view = View::Help;
        s
    });
    for b in BINDINGS.iter().filter(|b| !b.label.is_empty()) {
        assert!(help.contains(b.help), "{}", b.help);
    }
}

#[test]
fn breakdown_view_shows_limits_and_breakers() {
    use super::limits::{parse, Circuit};
    let metrics = "relay_circuit_state{provider=\"anthropic\"} 2\n\
        relay_circuit_state{provider=\"openai\"} 0\n\
        relay_circuit_transitions_total{provider=\"anthropic\",to=\"open\"} 2\n\
        relay_circuit_transitions_total{provider=\"anthropic\",to=\"half_open\"} 1\n\
        relay_ratelimit_rejections_total{scope=\"global\",rule=\"rpm\"} 17\n\
        relay_ratelimit_backend{backend=\"local\"} 1\n";
    for (w, h) in SIZES {
        let mut s = state(w, h);
        handle_key(&mut s, code(KeyCode::Tab));
        s.update(Msg::Limits(parse(
            "relay_ratelimit_backend{backend=\"local\"} 1\n",
        )));
        insta::assert_snapshot!(format!("models_no_limits_{w}x{h}"), draw(&s));
        s.update(Msg::Limits(parse(metrics)));
        let l = s.limits.as_ref().unwrap();
        assert_eq!(l.breakers["anthropic"].state, Circuit::Open);
        insta::assert_snapshot!(format!("models_limits_{w}x{h}"), draw(&s));
        // The open breaker is highlighted, the closed one is not.
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(&s, f)).unwrap();
        let buf = t.backend().buffer();
        let cell_of = |row: &str, word: &str| {
            let y = (0..h)
                .find(|&y| {
                    (0..w)
                        .map(|x| buf[(x, y)].symbol())
                        .collect::<String>()
                        .starts_with(row)
                })
                .unwrap();
            let line: String = (0..w).map(|x| buf[(x, y)].symbol()).collect();
            let x = line.find(word).unwrap() as u16;
            buf[(x, y)].fg
        };
        assert_eq!(cell_of(" anthropic", "open"), ratatui::style::Color::Red);
        assert_eq!(cell_of(" openai", "closed"), ratatui::style::Color::Reset);
    }
}

#[test]
fn captured_detail_is_kept_within_its_budget_newest_first() {
    let mut s = State::new("t", "http://127.0.0.1:1");
    let one = {
        let mut e = ev(0, Phase::End, 0);
        e.detail = Some(Box::new(stream_detail()));
        super::state::detail_bytes(&e)
    };
    s.detail_budget = one * 3;
    let with_detail = |seq: u64, phase: Phase| {
        let mut e = ev(seq, phase, 1);
        if phase == Phase::End {
            e.detail = Some(Box::new(stream_detail()));
        }
        Arc::new(e)
    };
    // A request that starts now and ends after newer ones have filled the budget.
    s.update(Msg::Event(with_detail(1, Phase::Start)));
    for seq in 2..=6 {
        s.update(Msg::Event(with_detail(seq, Phase::End)));
    }
    let held = |s: &State| {
        (1..=6)
            .filter(|seq| row(s, *seq).ev.detail.is_some())
            .collect::<Vec<_>>()
    };
    assert_eq!(held(&s), vec![4, 5, 6], "the newest three");
    assert!(row(&s, 2).detail_dropped && !row(&s, 1).detail_dropped);
    let text = format!("{:?}", super::view::detail_text(&row(&s, 2)));
    assert!(text.contains("let go"), "{text}");
    // The old request ends: its detail is over the budget at once.
    s.update(Msg::Event(with_detail(1, Phase::End)));
    assert_eq!(held(&s), vec![4, 5, 6]);
    assert!(row(&s, 1).detail_dropped);
    s.update(Msg::Event(with_detail(7, Phase::End)));
    assert_eq!(
        s.visible().iter().filter(|r| r.ev.detail.is_some()).count(),
        3
    );
    assert!(row(&s, 4).detail_dropped);
    // Paused: the events held for later keep to the same budget, oldest let go first.
    s.toggle_pause();
    for seq in 8..=11 {
        s.update(Msg::Event(with_detail(seq, Phase::End)));
    }
    assert_eq!(s.held(), 4);
    assert_eq!(s.captured_bytes(), (one * 3, one * 3));
    s.toggle_pause();
    let kept: Vec<u64> = s
        .visible()
        .iter()
        .filter(|r| r.ev.detail.is_some())
        .map(|r| r.ev.seq)
        .collect();
    assert_eq!(kept, vec![9, 10, 11]);
    assert!(row(&s, 8).detail_dropped, "let go while held");
    assert_eq!(s.captured_bytes(), (one * 3, 0));
}

#[test]
fn agent_rows_show_live_tokens_replays_and_clear_stale_status() {
    let mut s = state(120, 40);
    // A stream in flight reports its output so far; its end brings the real counts.
    let mut running = ev(90, Phase::Start, 26);
    running.tokens_live = Some(1234);
    s.update(Msg::Event(Arc::new(running.clone())));
    assert!(draw(&s).contains("…/~1.2k"), "{}", draw(&s));
    let mut end = done(running, 900, None);
    end.tokens_live = None;
    end.tokens_in = Some(10);
    end.tokens_out = Some(1300);
    s.update(Msg::Event(Arc::new(end)));
    assert!(!draw(&s).contains("…/~"), "{}", draw(&s));
    // A request the dashboard sent again is marked.
    let mut again = done(ev(91, Phase::End, 26), 5, Some(CacheState::Hit));
    again.detail = Some(Box::new(Detail {
        request_headers: vec![("x-relay-replay".into(), "tui".into())],
        ..Default::default()
    }));
    s.update(Msg::Event(Arc::new(again)));
    assert!(draw(&s).contains("↻"), "{}", draw(&s));
    // The path column on wide screens.
    assert!(draw(&s).contains("/v1/chat/completions"), "{}", draw(&s));
    // Rows of one agent session, by filter.
    let mut tagged = done(ev(92, Phase::End, 26), 5, None);
    tagged.session = Some("claude-20261202-0530".into());
    s.update(Msg::Event(Arc::new(tagged)));
    s.set_filter("session:claude-2026");
    assert_eq!(s.visible().len(), 1);
    s.set_filter("");
    // A status line goes once the selection moves on.
    s.status = Some("cannot replay: its headers and body were not captured".into());
    handle_key(&mut s, key('k'));
    assert_eq!(s.status, None);
}

/// A model without a price shows `unpriced` where its cost would be (row, header, breakdown and
/// detail), and what a provider's prompt cache saved is shown beside relay's own savings.
#[test]
fn unpriced_models_and_prompt_cache_savings_are_shown_apart() {
    let mut s = state(120, 30);
    let mut e = done(ev(200, Phase::End, 26), 30, Some(CacheState::Miss));
    e.model = Some("gpt-6.2-sol".into());
    e.tokens_in = Some(9);
    e.tokens_out = Some(2);
    e.cost_micro_usd = Some(0);
    e.unpriced = true;
    s.update(Msg::Event(Arc::new(e)));
    let mut e = done(ev(201, Phase::End, 26), 30, Some(CacheState::Miss));
    e.tokens_in = Some(1000);
    e.tokens_cached = Some(800);
    e.cost_micro_usd = Some(2_500);
    e.prompt_cache_saved_micro_usd = Some(1_000);
    s.update(Msg::Event(Arc::new(e)));
    let main = draw(&s);
    assert!(main.contains("unpriced 1"), "{main}");
    assert!(main.contains("+ prompt cache $0.0010"), "{main}");
    let unpriced_row = main.lines().find(|l| l.contains("gpt-6.2-sol")).unwrap();
    assert!(unpriced_row.contains("unpriced"), "{main}");
    handle_key(&mut s, key('G'));
    handle_key(&mut s, code(KeyCode::Enter));
    let detail = draw(&s);
    assert!(
        detail.contains("800 tokens read from the provider's cache saved $0.0010"),
        "{detail}"
    );
    handle_key(&mut s, code(KeyCode::Esc));
    handle_key(&mut s, key('k'));
    handle_key(&mut s, code(KeyCode::Enter));
    let detail = draw(&s);
    assert!(
        detail.contains("none for this model: counted at $0"),
        "{detail}"
    );
    handle_key(&mut s, code(KeyCode::Esc));
    handle_key(&mut s, code(KeyCode::Tab));
    let models = draw(&s);
    assert!(models.contains("p-cache"), "{models}");
}

/// The Models view's per-key table: requests, tokens and cost by booked key name (from the feed),
/// what is left of a budgeted key's budget (from the metrics); nothing while no request is booked
/// to a key.
#[test]
fn per_key_table_shows_names_and_budget_left() {
    let mut s = state(120, 40);
    handle_key(&mut s, code(KeyCode::Tab));
    assert!(!draw(&s).contains("Per key"), "no key booked yet");
    for (seq, key) in [(500, "alice"), (501, "alice"), (502, "ci-bot")] {
        let mut e = done(ev(seq, Phase::End, 26), 10, None);
        e.key = Some(key.to_string());
        e.cost_micro_usd = Some(20_000);
        s.update(Msg::Event(Arc::new(e)));
    }
    let mut limits = crate::tui::limits::LimitsSnapshot::default();
    limits.budgets.insert("alice".into(), 0.25);
    s.update(Msg::Limits(limits));
    let screen = draw(&s);
    assert!(screen.contains("Per key"), "{screen}");
    let alice = screen
        .lines()
        .find(|l| l.contains("alice"))
        .expect("alice's row");
    assert!(
        alice.contains(" 2 ") && alice.contains("$0.0400") && alice.contains("75% left"),
        "{alice}"
    );
    let bot = screen
        .lines()
        .find(|l| l.contains("ci-bot"))
        .expect("ci-bot's row");
    assert!(bot.contains('–'), "no budget: {bot}");
    assert!(!screen.contains("relay-"), "names only");
}
