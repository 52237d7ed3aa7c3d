//! Every key binding and its help text, in one table ([`BINDINGS`]): what [`super::keys`] acts on
//! and what the help view ([`super::view`]) shows.

use ratatui::crossterm::event::KeyCode;

/// What a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Down,
    Up,
    Top,
    Bottom,
    PageDown,
    PageUp,
    Open,
    Back,
    Quit,
    Filter,
    Pause,
    Clear,
    Sort,
    NextView,
    Export,
    Replay,
    Help,
}

/// One binding: the keys, what they do, the help line.
pub struct Binding {
    /// As shown in the help view.
    pub label: &'static str,
    pub keys: &'static [KeyCode],
    /// Needs Ctrl held.
    pub ctrl: bool,
    pub action: Action,
    pub help: &'static str,
}

/// All bindings, in help order.
pub const BINDINGS: &[Binding] = &[
    Binding {
        label: "j ↓",
        keys: &[KeyCode::Char('j'), KeyCode::Down],
        ctrl: false,
        action: Action::Down,
        help: "next request (scroll in detail)",
    },
    Binding {
        label: "k ↑",
        keys: &[KeyCode::Char('k'), KeyCode::Up],
        ctrl: false,
        action: Action::Up,
        help: "previous request",
    },
    Binding {
        label: "g Home",
        keys: &[KeyCode::Char('g'), KeyCode::Home],
        ctrl: false,
        action: Action::Top,
        help: "first request",
    },
    Binding {
        label: "G End",
        keys: &[KeyCode::Char('G'), KeyCode::End],
        ctrl: false,
        action: Action::Bottom,
        help: "newest request, and follow new ones",
    },
    Binding {
        label: "PgDn PgUp",
        keys: &[KeyCode::PageDown],
        ctrl: false,
        action: Action::PageDown,
        help: "page down / up",
    },
    Binding {
        label: "",
        keys: &[KeyCode::PageUp],
        ctrl: false,
        action: Action::PageUp,
        help: "",
    },
    Binding {
        label: "Enter",
        keys: &[KeyCode::Enter],
        ctrl: false,
        action: Action::Open,
        help: "request detail: headers, bodies, timing",
    },
    Binding {
        label: "q Esc",
        keys: &[KeyCode::Char('q'), KeyCode::Esc],
        ctrl: false,
        action: Action::Back,
        help: "back; quit from the main view",
    },
    Binding {
        label: "Ctrl-C",
        keys: &[KeyCode::Char('c')],
        ctrl: true,
        action: Action::Quit,
        help: "quit",
    },
    Binding {
        label: "/",
        keys: &[KeyCode::Char('/')],
        ctrl: false,
        action: Action::Filter,
        help: "filter: model:gpt-4o status:5xx provider:openai cache:hit text",
    },
    Binding {
        label: "p",
        keys: &[KeyCode::Char('p')],
        ctrl: false,
        action: Action::Pause,
        help: "pause / resume the table (events are held, not lost)",
    },
    Binding {
        label: "z",
        keys: &[KeyCode::Char('z')],
        ctrl: false,
        action: Action::Clear,
        help: "clear rows and totals",
    },
    Binding {
        label: "s",
        keys: &[KeyCode::Char('s')],
        ctrl: false,
        action: Action::Sort,
        help: "sort: arrival, latency, cost, status",
    },
    Binding {
        label: "Tab",
        keys: &[KeyCode::Tab],
        ctrl: false,
        action: Action::NextView,
        help: "requests / models and limits",
    },
    Binding {
        label: "e",
        keys: &[KeyCode::Char('e')],
        ctrl: false,
        action: Action::Export,
        help: "export the request as curl (keys redacted)",
    },
    Binding {
        label: "r",
        keys: &[KeyCode::Char('r')],
        ctrl: false,
        action: Action::Replay,
        help: "replay the request through relay",
    },
    Binding {
        label: "?",
        keys: &[KeyCode::Char('?')],
        ctrl: false,
        action: Action::Help,
        help: "this help",
    },
];
