//! The blog as a website, beside the JSON API: server-rendered HTML.
//!
//! ```text
//! GET  /          the articles, newest first, and a form to post one
//! POST /          (form: title, body) → 303 to the new article
//! GET  /a/ID      an article, its comments, and a form to comment
//! POST /a/ID      (form: text) → 303 back to the article
//! ```
//!
//! Pages say `cache-control: max-age=2`, so Switchyard's cache serves them — and
//! serves them stale while every instance is down. A form posts to the page it
//! changes: a cache drops its copy of a URL after a successful POST to it (RFC 9111
//! §4.4), so the author sees the new article or comment at once.

use rusqlite::{Connection, OptionalExtension, params};

/// How long a page may be served from a cache without asking an instance.
pub const PAGE_CACHE_CONTROL: &str = "max-age=2";

/// A page, or a redirect.
#[derive(Debug)]
pub enum Page {
    Html(u16, String),
    SeeOther(String),
}

/// The front page: every article, and the form to post one.
pub fn front(db: &Connection) -> rusqlite::Result<Page> {
    let mut statement = db.prepare(
        "SELECT a.id, a.title, (SELECT COUNT(*) FROM comments c WHERE c.article = a.id)
         FROM articles a ORDER BY a.id DESC",
    )?;
    let rows = statement
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut body = String::from("<h1>The blog</h1>\n<ul id=\"articles\">\n");
    for (id, title, comments) in &rows {
        body.push_str(&format!(
            "<li><a href=\"/a/{id}\">{}</a> <small>({comments} comment{})</small></li>\n",
            escape(title),
            if *comments == 1 { "" } else { "s" }
        ));
    }
    if rows.is_empty() {
        body.push_str("<li><em>Nothing yet: write the first article.</em></li>\n");
    }
    body.push_str(
        "</ul>\n<h2>Write an article</h2>\n<form method=\"post\" action=\"/\">\n\
         <p><input name=\"title\" id=\"title\" placeholder=\"Title\" required></p>\n\
         <p><textarea name=\"body\" id=\"body\" rows=\"6\" cols=\"60\" placeholder=\"Text\" required></textarea></p>\n\
         <p><button type=\"submit\" id=\"publish\">Publish</button></p>\n</form>\n",
    );
    Ok(Page::Html(200, layout("The blog", &body)))
}

/// One article with its comments, and the form to comment.
pub fn article(db: &Connection, id: i64) -> rusqlite::Result<Page> {
    let found = db
        .query_row(
            "SELECT title, body FROM articles WHERE id = ?1",
            [id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?;
    let Some((title, text)) = found else {
        return Ok(not_found());
    };
    let mut statement = db.prepare("SELECT text FROM comments WHERE article = ?1 ORDER BY id")?;
    let comments = statement
        .query_map([id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut body = format!(
        "<p><a href=\"/\">← all articles</a></p>\n<article>\n<h1 id=\"title\">{}</h1>\n",
        escape(&title)
    );
    for paragraph in text.split("\n\n") {
        body.push_str(&format!("<p>{}</p>\n", escape(paragraph)));
    }
    body.push_str("</article>\n<h2>Comments</h2>\n<ol id=\"comments\">\n");
    for c in &comments {
        body.push_str(&format!("<li>{}</li>\n", escape(c)));
    }
    body.push_str(&format!(
        "</ol>\n<form method=\"post\" action=\"/a/{id}\">\n\
         <p><textarea name=\"text\" id=\"comment\" rows=\"3\" cols=\"60\" placeholder=\"Your comment\" required></textarea></p>\n\
         <p><button type=\"submit\" id=\"send\">Comment</button></p>\n</form>\n"
    ));
    Ok(Page::Html(200, layout(&title, &body)))
}

/// `POST /`: a new article from the form.
pub fn post_article(db: &Connection, form: &[u8]) -> rusqlite::Result<Page> {
    let (Some(title), Some(text)) = (field(form, "title"), field(form, "body")) else {
        return Ok(bad_form("an article needs a title and a text"));
    };
    if title.trim().is_empty() || text.trim().is_empty() {
        return Ok(bad_form("an article needs a title and a text"));
    }
    db.execute(
        "INSERT INTO articles (title, body) VALUES (?1, ?2)",
        params![title.trim(), text.trim().replace("\r\n", "\n")],
    )?;
    Ok(Page::SeeOther(format!("/a/{}", db.last_insert_rowid())))
}

/// `POST /a/ID`: a comment from the form.
pub fn post_comment(db: &Connection, id: i64, form: &[u8]) -> rusqlite::Result<Page> {
    let exists = db
        .query_row("SELECT 1 FROM articles WHERE id = ?1", [id], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists {
        return Ok(not_found());
    }
    let Some(text) = field(form, "text").filter(|t| !t.trim().is_empty()) else {
        return Ok(bad_form("a comment needs a text"));
    };
    db.execute(
        "INSERT INTO comments (article, text) VALUES (?1, ?2)",
        params![id, text.trim()],
    )?;
    Ok(Page::SeeOther(format!("/a/{id}")))
}

/// The page for a URL that names no article.
pub fn not_found() -> Page {
    Page::Html(
        404,
        layout(
            "Not found",
            "<h1>Not found</h1>\n<p><a href=\"/\">All articles</a></p>\n",
        ),
    )
}

fn bad_form(why: &str) -> Page {
    Page::Html(
        400,
        layout(
            "Not posted",
            &format!(
                "<h1>Not posted</h1>\n<p>{}.</p>\n<p><a href=\"/\">Back</a></p>\n",
                escape(why)
            ),
        ),
    )
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto;line-height:1.4}}\
         textarea,input{{width:100%}}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// Text made safe inside HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A field of an `application/x-www-form-urlencoded` body.
pub fn field(form: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(form).split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_html_escapes() {
        let form = b"title=Hello+%26+welcome&body=a%0Ab%3Cc%3E&x=%zz";
        assert_eq!(field(form, "title").as_deref(), Some("Hello & welcome"));
        assert_eq!(field(form, "body").as_deref(), Some("a\nb<c>"));
        assert_eq!(field(form, "x").as_deref(), Some("%zz"));
        assert_eq!(field(form, "none"), None);
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
