//! Page markup: escaping, the page shell, cards, tables, badges and operator controls.
//!
//! Text handed in is escaped here; only the markup of this crate's own builders (charts,
//! [`Cell::Markup`]) goes in as it is.

use std::fmt::Write as _;

use crate::{CSS_PATH, JS_PATH, fmt};

/// HTML-escapes `s` for text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// How a figure or badge reads at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Nothing to say.
    Neutral,
    /// Healthy.
    Good,
    /// Needs a look.
    Warn,
    /// Broken or refused.
    Bad,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Neutral => "neutral",
            Tone::Good => "good",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
        }
    }

    /// `Good` when `ok`, else `bad`.
    pub fn of(ok: bool, bad: Tone) -> Tone {
        if ok { Tone::Good } else { bad }
    }
}

/// A small coloured label.
pub fn badge(tone: Tone, text: &str) -> String {
    format!(
        "<span class=\"badge {}\">{}</span>",
        tone.class(),
        esc(text)
    )
}

/// A flag as a `yes`/`no` badge: `yes` is good, `no` reads as `no_tone`.
pub fn flag(b: bool, no_tone: Tone) -> String {
    badge(Tone::of(b, no_tone), fmt::yes_no(b))
}

/// A long identifier shortened for the eye, its full value in the tooltip and selectable.
pub fn hash(full: &str) -> String {
    if full.is_empty() {
        return "–".into();
    }
    format!(
        "<span class=\"hash\" title=\"{}\">{}</span>",
        esc(full),
        esc(&fmt::short(full, 8))
    )
}

/// A table or key/value cell.
#[derive(Debug, Clone)]
pub enum Cell {
    /// Text, escaped.
    Text(String),
    /// A number (right-aligned, tabular figures), escaped.
    Num(String),
    /// A long identifier: [`hash`].
    Hash(String),
    /// A long value shown whole, wrapping anywhere (an address, a URL).
    Long(String),
    /// A [`badge`].
    Badge(Tone, String),
    /// Markup built by this crate (a badge, a chart): not escaped.
    Markup(String),
}

impl Cell {
    fn render(&self, o: &mut String) {
        match self {
            Cell::Text(t) => {
                let _ = write!(o, "<td>{}</td>", esc(t));
            }
            Cell::Num(t) => {
                let _ = write!(o, "<td class=\"num\">{}</td>", esc(t));
            }
            Cell::Hash(h) => {
                let _ = write!(o, "<td>{}</td>", hash(h));
            }
            Cell::Long(t) => {
                let _ = write!(o, "<td class=\"long\">{}</td>", esc(t));
            }
            Cell::Badge(tone, t) => {
                let _ = write!(o, "<td>{}</td>", badge(*tone, t));
            }
            Cell::Markup(m) => {
                let _ = write!(o, "<td>{m}</td>");
            }
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

/// A card: a label, a big figure and an optional note under it.
#[derive(Debug, Clone)]
pub struct Card {
    label: String,
    value: String,
    note: String,
    tone: Tone,
    id: String,
}

impl Card {
    /// A neutral card.
    pub fn new(label: &str, value: impl Into<String>) -> Card {
        Card {
            label: label.to_owned(),
            value: value.into(),
            note: String::new(),
            tone: Tone::Neutral,
            id: String::new(),
        }
    }

    /// With a note under the figure.
    pub fn note(mut self, note: impl Into<String>) -> Card {
        self.note = note.into();
        self
    }

    /// With a tone.
    pub fn tone(mut self, tone: Tone) -> Card {
        self.tone = tone;
        self
    }

    /// With a `data-figure` name, so a test or a script can find the figure.
    pub fn id(mut self, id: &str) -> Card {
        self.id = id.to_owned();
        self
    }
}

/// A table: a title, column headers and rows; it scrolls inside its box when wider than
/// the page.
#[derive(Debug, Clone)]
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
    empty: String,
    id: String,
}

impl Table {
    /// An empty table titled `title` with these columns.
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            empty: "nothing yet".into(),
            id: String::new(),
        }
    }

    /// What it says when it has no rows.
    pub fn empty(mut self, text: &str) -> Table {
        self.empty = text.to_owned();
        self
    }

    /// With an `id` (for tests and links).
    pub fn id(mut self, id: &str) -> Table {
        self.id = id.to_owned();
        self
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<Cell>) -> &mut Table {
        self.rows.push(cells);
        self
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table's markup.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let id = if self.id.is_empty() {
            String::new()
        } else {
            format!(" id=\"{}\"", esc(&self.id))
        };
        let _ = write!(
            o,
            "<section class=\"box\"{id}><h2>{}</h2>",
            esc(&self.title)
        );
        if self.rows.is_empty() {
            let _ = write!(o, "<p class=\"empty\">{}</p></section>", esc(&self.empty));
            return o;
        }
        o.push_str("<div class=\"scroll\"><table><thead><tr>");
        for h in &self.headers {
            let _ = write!(o, "<th>{}</th>", esc(h));
        }
        o.push_str("</tr></thead><tbody>");
        for r in &self.rows {
            o.push_str("<tr>");
            for c in r {
                c.render(&mut o);
            }
            o.push_str("</tr>");
        }
        o.push_str("</tbody></table></div></section>");
        o
    }
}

/// An operator control: a button posting to `path` with the token typed into the page,
/// optionally with one query parameter from a field next to it.
#[derive(Debug, Clone)]
pub struct Control {
    label: String,
    path: String,
    param: Option<(String, String)>,
    tone: Tone,
}

impl Control {
    /// A button posting to `path` (a same-origin path such as `/control/disable`).
    pub fn new(label: &str, path: &str) -> Control {
        Control {
            label: label.to_owned(),
            path: path.to_owned(),
            param: None,
            tone: Tone::Neutral,
        }
    }

    /// With a field whose value is sent as `?name=value`; `hint` is its placeholder.
    pub fn param(mut self, name: &str, hint: &str) -> Control {
        self.param = Some((name.to_owned(), hint.to_owned()));
        self
    }

    /// Coloured as `tone` (`Bad` for a destructive one).
    pub fn tone(mut self, tone: Tone) -> Control {
        self.tone = tone;
        self
    }
}

/// A page: the shell (stylesheet, script, header), then the blocks added in order inside
/// `<main id="main">`, which the script refreshes in place every `refresh` seconds.
#[derive(Debug)]
pub struct Page {
    title: String,
    subtitle: String,
    refresh_secs: u32,
    controls: Vec<Control>,
    main: String,
    footer: String,
}

impl Page {
    /// A page titled `title`.
    pub fn new(title: &str) -> Page {
        Page {
            title: title.to_owned(),
            subtitle: String::new(),
            refresh_secs: 10,
            controls: Vec::new(),
            main: String::new(),
            footer: String::new(),
        }
    }

    /// A line under the title.
    pub fn subtitle(&mut self, text: &str) -> &mut Page {
        self.subtitle = text.to_owned();
        self
    }

    /// How often the script refreshes the page's main part (0: never).
    pub fn refresh(&mut self, secs: u32) -> &mut Page {
        self.refresh_secs = secs;
        self
    }

    /// A small line at the bottom (when the page was made, by what).
    pub fn footer(&mut self, text: &str) -> &mut Page {
        self.footer = text.to_owned();
        self
    }

    /// A row of cards.
    pub fn cards(&mut self, cards: &[Card]) -> &mut Page {
        self.main.push_str("<div class=\"cards\">");
        for c in cards {
            let id = if c.id.is_empty() {
                String::new()
            } else {
                format!(" data-figure=\"{}\"", esc(&c.id))
            };
            // A long figure (a TON amount to the nanoTON) is set smaller, on one line.
            let long = if c.value.chars().count() > 11 {
                " long"
            } else {
                ""
            };
            let _ = write!(
                self.main,
                "<div class=\"card {}{long}\"><div class=\"label\">{}</div><div class=\"figure\"{id}>{}</div>",
                c.tone.class(),
                esc(&c.label),
                esc(&c.value)
            );
            if !c.note.is_empty() {
                let _ = write!(self.main, "<div class=\"note\">{}</div>", esc(&c.note));
            }
            self.main.push_str("</div>");
        }
        self.main.push_str("</div>");
        self
    }

    /// A grid of titled panels whose content is markup of this crate (charts).
    pub fn panels(&mut self, panels: &[(&str, String)]) -> &mut Page {
        self.main.push_str("<div class=\"panels\">");
        for (title, body) in panels {
            let _ = write!(
                self.main,
                "<section class=\"box\"><h2>{}</h2>{body}</section>",
                esc(title)
            );
        }
        self.main.push_str("</div>");
        self
    }

    /// A titled key/value list.
    pub fn facts(&mut self, title: &str, rows: &[(&str, Cell)]) -> &mut Page {
        let _ = write!(
            self.main,
            "<section class=\"box\"><h2>{}</h2><dl class=\"facts\">",
            esc(title)
        );
        for (k, v) in rows {
            let mut cell = String::new();
            v.render(&mut cell);
            // A <td> becomes a <dd> with the same class.
            let dd = cell
                .replacen("<td", "<dd", 1)
                .trim_end_matches("</td>")
                .to_owned()
                + "</dd>";
            let _ = write!(self.main, "<div><dt>{}</dt>{dd}</div>", esc(k));
        }
        self.main.push_str("</dl></section>");
        self
    }

    /// A table.
    pub fn table(&mut self, t: &Table) -> &mut Page {
        self.main.push_str(&t.render());
        self
    }

    /// The operator controls, shown above the main part with the token field.
    pub fn controls(&mut self, controls: Vec<Control>) -> &mut Page {
        self.controls = controls;
        self
    }

    /// The whole document.
    pub fn render(&self) -> String {
        let t = esc(&self.title);
        let mut o = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{t}</title><link rel=\"stylesheet\" href=\"{CSS_PATH}\">\
             <script src=\"{JS_PATH}\" defer></script></head><body>\
             <header class=\"top\"><h1>{t}</h1>"
        );
        if !self.subtitle.is_empty() {
            let _ = write!(o, "<p class=\"sub\">{}</p>", esc(&self.subtitle));
        }
        o.push_str("</header>");
        if !self.controls.is_empty() {
            o.push_str(
                "<details class=\"box ops\" id=\"ops\"><summary>Operator controls</summary>\
                 <p class=\"hint\">Controls post to this server with the admin token (its \
                 token file); the page never holds it. Enable JavaScript to use them.</p>\
                 <label class=\"field\">Admin token <input type=\"password\" id=\"token\" \
                 autocomplete=\"off\" spellcheck=\"false\"></label><div class=\"ctls\">",
            );
            for (i, c) in self.controls.iter().enumerate() {
                let mut attrs = format!("data-post=\"{}\"", esc(&c.path));
                if let Some((name, hint)) = &c.param {
                    let _ = write!(
                        o,
                        "<input class=\"param\" id=\"param{i}\" placeholder=\"{}\" \
                         aria-label=\"{}\">",
                        esc(hint),
                        esc(name)
                    );
                    let _ = write!(
                        attrs,
                        " data-param=\"{}\" data-input=\"param{i}\"",
                        esc(name)
                    );
                }
                let _ = write!(
                    o,
                    "<button type=\"button\" class=\"{}\" {attrs}>{}</button>",
                    c.tone.class(),
                    esc(&c.label)
                );
            }
            o.push_str("</div><output id=\"ctl-out\" aria-live=\"polite\"></output></details>");
        }
        let _ = write!(
            o,
            "<main id=\"main\" data-refresh=\"{}\">{}</main>",
            self.refresh_secs, self.main
        );
        if !self.footer.is_empty() {
            let _ = write!(o, "<footer>{}</footer>", esc(&self.footer));
        }
        o.push_str("</body></html>\n");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_handed_in_is_escaped() {
        let mut p = Page::new("a <b>");
        let mut t = Table::new("t\"", &["<h>"]);
        t.row(vec![
            Cell::Text("<script>".into()),
            Cell::Hash("\"><x>".repeat(10)),
            Cell::Badge(Tone::Bad, "&".into()),
        ]);
        p.subtitle("'s")
            .cards(&[Card::new("<l>", "<v>").note("<n>").id("x\"")])
            .facts("<f>", &[("<k>", Cell::Long("<v>".into()))])
            .table(&t)
            .controls(vec![Control::new("<c>", "/p?\"").param("v\"", "<h>")])
            .footer("<f>");
        let html = p.render();
        for bad in [
            "<b>", "<script>", "<x>", "<l>", "<v>", "<n>", "<k>", "<c>", "<h>", "<f>",
        ] {
            assert!(!html.contains(bad), "{bad} unescaped in {html}");
        }
        assert!(html.contains("&lt;script&gt;") && html.contains("&amp;"));
        // No inline script or style: the CSP forbids them.
        assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains("style="));
        assert!(html.contains(&format!("src=\"{JS_PATH}\"")));
    }

    #[test]
    fn tables_scroll_in_their_box_and_say_when_empty() {
        let t = Table::new("workers", &["a"]).empty("no workers");
        assert!(t.render().contains("no workers") && t.is_empty());
        let mut t = Table::new("workers", &["a"]).id("w");
        t.row(vec![Cell::Num("1".into())]);
        let h = t.render();
        assert!(h.contains("<div class=\"scroll\"><table>") && h.contains("id=\"w\""));
        assert!(h.contains("<td class=\"num\">1</td>"));
    }

    #[test]
    fn facts_are_a_definition_list_and_hashes_keep_their_full_value() {
        let mut p = Page::new("x");
        let full = "ab".repeat(32);
        p.facts("f", &[("image", Cell::Hash(full.clone()))]);
        let h = p.render();
        assert!(h.contains(&format!(
            "<dt>image</dt><dd><span class=\"hash\" title=\"{full}\">"
        )));
        assert!(h.contains("</span></dd>"));
        assert_eq!(hash(""), "–");
    }

    #[test]
    fn controls_carry_no_token_and_name_their_path() {
        let mut p = Page::new("w");
        p.controls(vec![
            Control::new("Disable", "/control/disable").tone(Tone::Bad),
            Control::new("Set", "/control/coefficient").param("value", "1000"),
        ]);
        let h = p.render();
        assert!(h.contains("data-post=\"/control/disable\""));
        assert!(h.contains("data-param=\"value\" data-input=\"param1\""));
        assert!(h.contains("id=\"token\"") && h.contains("type=\"password\""));
    }
}
