//! The portable form of a request: what stays of it when the text that changes from day to day,
//! directory to directory and machine to machine is normalized, so a recording replays offline
//! the next day, from another checkout, on another machine. For matching only: what is sent and
//! stored is the request as it was.
//!
//! Each rule is anchored on what a client writes around the volatile text, never on the shape of
//! the text alone, so the user's own words are left as they are: a question about `2024-01-01`
//! and one about `2025-06-01` stay two questions.
//!
//! | what | written by | becomes |
//! |---|---|---|
//! | the working directory, found in the body (`Primary working directory: …`, `<cwd>…</cwd>`), and its dashed form (`-tmp-proj`, Claude Code's project folder) | Claude Code, Codex | `<cwd>` |
//! | a home directory: `/home/<user>`, `/Users/<user>`, `/root`, `C:\Users\<user>` before a `/` or the end of a path | any | `~` |
//! | `Today's date is …`, `<current_date>…</current_date>`, `<timezone>…</timezone>` | Claude Code, Codex | `<date>`, `<timezone>` |
//! | `OS Version: …`, `Platform: …`, `Shell: …`, `<shell>…</shell>` | Claude Code, Codex | `<os>`, `<platform>`, `<shell>` |
//! | `Is a git repository: …` and the `gitStatus:` block (branch, status, recent commits) | Claude Code | `<git>`, removed |

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// The rewrite of one request's strings into their portable form.
#[derive(Debug, Clone, Default)]
pub struct Portable {
    /// The working directory as written, and its dashed form; longest first.
    cwd: Vec<String>,
}

fn re(s: &str) -> Regex {
    Regex::new(s).expect("a valid pattern")
}

static CWD: LazyLock<Regex> = LazyLock::new(|| {
    // On the raw JSON text: a path ends at a quote, a backslash (an escape: `\n`) or a `<`.
    re(r#"(?:[Ww]orking directory: |<cwd>)([^"\\<\n]+)"#)
});
static HOME: LazyLock<Regex> = LazyLock::new(|| {
    // Not inside a word or a path (`/srv/root`), nor a closing tag (`</root>`).
    re(
        r#"(^|[^<\w.~/\\-])(?:/home/[^/\s"'`<>:]+|/Users/[^/\s"'`<>:]+|/root|[A-Za-z]:\\Users\\[^\\\s"'`<>:]+)(/|\\|$|[\s"'`<>):,;\]])"#,
    )
});
static FIXED: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    vec![
        (re(r"(?:\A|\n+)gitStatus: [\s\S]*\z"), ""),
        (
            re(r"(?m)^(\s*-?\s*(?:Is a git repository|Is directory a git repo): )\w+"),
            "${1}<git>",
        ),
        (re(r"([Tt]oday's date is )[^\n.]+(?:\.\d+)?"), "${1}<date>"),
        (
            re(r"(<current_date>)[^<]*(</current_date>)"),
            "${1}<date>${2}",
        ),
        (re(r"(<timezone>)[^<]*(</timezone>)"), "${1}<timezone>${2}"),
        (re(r"(?m)^(\s*-?\s*OS Version: )[^\n]*"), "${1}<os>"),
        (re(r"(?m)^(\s*-?\s*Platform: )[^\n]*"), "${1}<platform>"),
        (re(r"(?m)^(\s*-?\s*Shell: )[^\n]*"), "${1}<shell>"),
        (re(r"(<shell>)[^<]*(</shell>)"), "${1}<shell>${2}"),
    ]
});

/// Text at least one rule needs (the home prefixes and each rule's anchor).
const ANCHORS: [&str; 13] = [
    "/home/",
    "/Users/",
    "/root",
    ":\\Users\\",
    "gitStatus: ",
    "git repo",
    "ate is ",
    "<current_date>",
    "<timezone>",
    "OS Version: ",
    "Platform: ",
    "Shell: ",
    "<shell>",
];

impl Portable {
    /// The rewrite for `body` (the raw request): finds its working directory, if it names one.
    pub fn of(body: &[u8]) -> Portable {
        let names_one = memchr::memmem::find(body, b"orking directory: ").is_some()
            || memchr::memmem::find(body, b"<cwd>").is_some();
        if !names_one {
            return Portable::default();
        }
        let text = String::from_utf8_lossy(body);
        let mut cwd = Vec::new();
        if let Some(m) = CWD.captures(&text).and_then(|c| c.get(1)) {
            let dir = m.as_str().trim_end_matches('/');
            // A root or one-letter directory would rewrite too much.
            if dir.len() > 2 {
                let dashed: String = dir
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                cwd.push(dir.to_string());
                cwd.push(dashed);
            }
        }
        Portable { cwd }
    }

    /// `s` in its portable form, or `None` when no rule applies.
    pub fn rewrite(&self, s: &str) -> Option<String> {
        // Most strings hold none of the anchors: a few substring checks, no regex.
        if !self.cwd.iter().any(|d| s.contains(d.as_str()))
            && !ANCHORS.iter().any(|a| s.contains(a))
        {
            return None;
        }
        let mut out: Cow<'_, str> = Cow::Borrowed(s);
        for dir in &self.cwd {
            if out.contains(dir.as_str()) {
                out = Cow::Owned(out.replace(dir.as_str(), "<cwd>"));
            }
        }
        // Twice: a match takes the character after a home with it, which may start the next.
        for _ in 0..2 {
            if let Cow::Owned(o) = HOME.replace_all(&out, "${1}~${2}") {
                out = Cow::Owned(o);
            }
        }
        for (pattern, with) in FIXED.iter() {
            if let Cow::Owned(o) = pattern.replace_all(&out, *with) {
                out = Cow::Owned(o);
            }
        }
        match out {
            Cow::Borrowed(_) => None,
            Cow::Owned(o) => Some(o),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        Portable::default()
            .rewrite(s)
            .unwrap_or_else(|| s.to_string())
    }

    #[test]
    fn each_rule() {
        let claude = Portable::of(
            br#"{"system":[{"text":"x\n - Primary working directory: /home/ann/src/app\n - Is a git repository: true"}]}"#,
        );
        let at = |s: &str| claude.rewrite(s).unwrap_or_else(|| s.to_string());
        assert_eq!(
            at(" - Primary working directory: /home/ann/src/app\n - Is a git repository: true\n - Platform: linux\n - Shell: zsh\n - OS Version: Linux 6.1.0-18-amd64"),
            " - Primary working directory: <cwd>\n - Is a git repository: <git>\n - Platform: <platform>\n - Shell: <shell>\n - OS Version: <os>"
        );
        assert_eq!(
            at("memory at `/home/ann/.claude/projects/-home-ann-src-app/memory/`"),
            "memory at `~/.claude/projects/<cwd>/memory/`"
        );
        assert_eq!(
            at("edit /home/ann/src/app/src/main.rs"),
            "edit <cwd>/src/main.rs"
        );
        assert_eq!(p("Today's date is 2026-12-02."), "Today's date is <date>.");
        assert_eq!(
            p("be brief.\n\ngitStatus: This is the git status\nCurrent branch: main\n\nStatus:\nM a.rs\n\nRecent commits:\nabc fix"),
            "be brief."
        );
        let codex = Portable::of(br#"{"input":[{"content":[{"text":"<environment_context>\n  <cwd>/Users/bo/w/x</cwd>"}]}]}"#);
        assert_eq!(
            codex
                .rewrite("<cwd>/Users/bo/w/x</cwd>\n  <shell>bash</shell>\n  <current_date>2026-12-02</current_date>\n  <timezone>Etc/UTC</timezone><root>/Users/bo/w/x</root>")
                .unwrap(),
            "<cwd><cwd></cwd>\n  <shell><shell></shell>\n  <current_date><date></current_date>\n  <timezone><timezone></timezone><root><cwd></root>"
        );
        assert_eq!(
            p("skills in `/root/.codex/skills`"),
            "skills in `~/.codex/skills`"
        );
        assert_eq!(p(r"C:\Users\Bo\proj"), r"~\proj");
        assert_eq!(p("/root /root /home/a"), "~ ~ ~");
        assert_eq!(Portable::default().rewrite("say hi"), None, "nothing to do");
    }

    #[test]
    fn genuinely_different_prompts_stay_apart() {
        for (a, b) in [
            (
                "what happened on 2024-01-01?",
                "what happened on 2025-06-01?",
            ),
            ("read /etc/passwd", "read /etc/shadow"),
            ("my home is /home", "my home is /house"),
            ("/rooted/x", "/rootless/x"),
            ("</root> a", "</root> b"),
            ("/home/ann/a.txt", "/home/ann/b.txt"),
            ("OS Versions differ", "OS Versions match"),
            ("our Platform: iOS", "our Platform: Android"),
            ("today is a good day", "today is a bad day"),
        ] {
            assert_ne!(p(a), p(b), "{a:?} and {b:?} merged");
        }
        // The same text with another working directory, home and date is one prompt.
        let one = Portable::of(br#"{"t":"Primary working directory: /home/a/one"}"#);
        let two = Portable::of(br#"{"t":"Primary working directory: /Users/b/two"}"#);
        assert_eq!(
            one.rewrite("Primary working directory: /home/a/one\nToday's date is 2026-12-01."),
            two.rewrite("Primary working directory: /Users/b/two\nToday's date is 2026-12-02.")
        );
        // But a file under it is still a file of its own.
        assert_ne!(
            one.rewrite("open /home/a/one/x.rs"),
            one.rewrite("open /home/a/one/y.rs")
        );
    }
}
