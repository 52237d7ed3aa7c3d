//! [`handle_key`], the one function keys go through (tests call it directly), over the table of
//! bindings in [`super::bindings`].

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::widgets::{Paragraph, Wrap};

use super::actions;
pub use super::bindings::{Action, Binding, BINDINGS};
use super::state::{Popup, State, View};

/// What the run loop must do after a key (side effects stay out of the state).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Quit,
    /// Save this curl command (already shown in a popup).
    Export {
        request_id: String,
        curl: String,
    },
    /// Send this request through relay.
    Replay(actions::Replay),
}

/// The action bound to `key`, if any.
pub fn action(key: &KeyEvent) -> Option<Action> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    BINDINGS
        .iter()
        .find(|b| b.ctrl == ctrl && b.keys.contains(&key.code))
        .map(|b| b.action)
}

/// Applies one key press to the state.
pub fn handle_key(state: &mut State, key: KeyEvent) -> Option<Command> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let act = action(&key);
    if act == Some(Action::Quit) {
        return Some(Command::Quit);
    }
    if let Some(input) = &mut state.filter_input {
        match key.code {
            KeyCode::Enter => {
                let text = std::mem::take(input);
                state.filter_input = None;
                state.set_filter(&text);
            }
            KeyCode::Esc => state.filter_input = None,
            KeyCode::Backspace => {
                input.pop();
            }
            KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => input.push(c),
            _ => {}
        }
        return None;
    }
    if state.popup.is_some() {
        // Any key closes the popup.
        state.popup = None;
        return None;
    }
    let act = act?;
    if matches!(
        act,
        Action::Up
            | Action::Down
            | Action::PageUp
            | Action::PageDown
            | Action::Top
            | Action::Bottom
            | Action::Open
            | Action::Back
            | Action::NextView
    ) {
        // A status line is about the row it was made on: moving on clears it.
        state.status = None;
    }
    match state.view {
        View::Help => {
            if matches!(act, Action::Back | Action::Help) {
                state.view = View::Main;
            }
            None
        }
        View::Models => match act {
            Action::Back | Action::NextView => {
                state.view = View::Main;
                None
            }
            Action::Help => {
                state.view = View::Help;
                None
            }
            _ => None,
        },
        View::Detail => match act {
            Action::Back => {
                state.view = View::Main;
                None
            }
            Action::Down => {
                state.detail_scroll = (state.detail_scroll + 1).min(detail_bottom(state));
                None
            }
            Action::Up => {
                state.detail_scroll = state.detail_scroll.saturating_sub(1);
                None
            }
            Action::PageDown => {
                state.detail_scroll = state
                    .detail_scroll
                    .saturating_add(state.page() as u16)
                    .min(detail_bottom(state));
                None
            }
            Action::PageUp => {
                state.detail_scroll = state.detail_scroll.saturating_sub(state.page() as u16);
                None
            }
            Action::Top => {
                state.detail_scroll = 0;
                None
            }
            Action::Bottom => {
                state.detail_scroll = detail_bottom(state);
                None
            }
            Action::Export => export(state),
            Action::Replay => replay(state),
            Action::Help => {
                state.view = View::Help;
                None
            }
            _ => None,
        },
        View::Main => match act {
            Action::Back => Some(Command::Quit),
            Action::Down => {
                state.move_by(1);
                None
            }
            Action::Up => {
                state.move_by(-1);
                None
            }
            Action::PageDown => {
                state.move_by(state.page() as isize);
                None
            }
            Action::PageUp => {
                state.move_by(-(state.page() as isize));
                None
            }
            Action::Top => {
                state.top();
                None
            }
            Action::Bottom => {
                state.bottom();
                None
            }
            Action::Open => {
                if state.selected_row().is_some() {
                    // Pin the selection so the detail stays on this request.
                    if let Some(id) = state.selected_row().map(|r| r.id) {
                        state.selected = Some(id);
                        state.follow = false;
                    }
                    state.detail_scroll = 0;
                    state.view = View::Detail;
                }
                None
            }
            Action::Filter => {
                state.filter_input = Some(state.filter.text.clone());
                None
            }
            Action::Pause => {
                state.toggle_pause();
                None
            }
            Action::Clear => {
                state.clear();
                None
            }
            Action::Sort => {
                state.cycle_sort();
                None
            }
            Action::NextView => {
                state.view = View::Models;
                None
            }
            Action::Export => export(state),
            Action::Replay => replay(state),
            Action::Help => {
                state.view = View::Help;
                None
            }
            Action::Quit => Some(Command::Quit),
        },
    }
}

/// The detail view's last scroll position: its last (wrapped) line at the bottom of the screen.
fn detail_bottom(state: &State) -> u16 {
    let lines = state
        .selected_row()
        .map(|r| {
            Paragraph::new(super::view::detail_text(r))
                .wrap(Wrap { trim: false })
                .line_count(state.size.0)
        })
        .unwrap_or(0);
    let screen = state.size.1.saturating_sub(super::state::DETAIL_CHROME) as usize;
    lines.saturating_sub(screen).min(u16::MAX as usize) as u16
}

fn export(state: &mut State) -> Option<Command> {
    let row = state.selected_row()?;
    let curl = actions::curl(&row.ev, &state.relay_url);
    let request_id = row.ev.request_id.clone();
    state.popup = Some(Popup {
        title: "curl (any key closes)".to_string(),
        text: curl.clone(),
    });
    Some(Command::Export { request_id, curl })
}

fn replay(state: &mut State) -> Option<Command> {
    let row = state.selected_row()?;
    match actions::Replay::of(&row.ev) {
        Ok(r) => {
            state.status = Some(format!("replaying {} {}", r.method, r.path));
            Some(Command::Replay(r))
        }
        Err(why) => {
            state.status = Some(format!("cannot replay: {why}"));
            None
        }
    }
}
