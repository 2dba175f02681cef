//! Templates for a mapping's room, event and tenant: literal text with
//! `{1}`..`{n}` (the subject's or channel's wildcards), `{subject}` (the
//! whole subject or channel) and `{body.<field>}` (a field of the JSON
//! message; `.` walks into objects, a number indexes an array). `{{` and
//! `}}` are literal braces.

use serde_json::Value;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{n}`, 1-based.
    Wildcard(usize),
    Subject,
    /// `{body.a.b}`: the path `["a", "b"]`.
    Body(Vec<String>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template is rendered from.
pub struct Input<'a> {
    /// The subject or channel.
    pub subject: &'a str,
    /// The wildcard values, in order.
    pub wildcards: &'a [String],
    /// The message as JSON, when it is JSON.
    pub body: Option<&'a Value>,
}

impl Template {
    /// Parses `text`; the message names what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(format!("`{text}`: `}}` without `{{` (write `}}}}`)")),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("`{text}`: `{{{name}` is not closed")),
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(field(&name).map_err(|e| format!("`{text}`: {e}"))?);
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// The highest `{n}` used (0 if none).
    pub fn max_wildcard(&self) -> usize {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Wildcard(n) => Some(*n),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether it reads the message body.
    pub fn uses_body(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Body(_)))
    }

    /// Renders it; the error names the field that is missing or unusable.
    pub fn render(&self, input: &Input<'_>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Subject => out.push_str(input.subject),
                Part::Wildcard(n) => match input.wildcards.get(n - 1) {
                    Some(v) => out.push_str(v),
                    None => return Err(format!("`{{{n}}}`: the subject has no such wildcard")),
                },
                Part::Body(path) => {
                    let name = path.join(".");
                    let mut value = input
                        .body
                        .ok_or_else(|| format!("`{{body.{name}}}`: the message is not JSON"))?;
                    for segment in path {
                        let next = match value {
                            Value::Object(map) => map.get(segment),
                            Value::Array(items) => {
                                segment.parse::<usize>().ok().and_then(|i| items.get(i))
                            }
                            _ => None,
                        };
                        value = next.ok_or_else(|| {
                            format!("`{{body.{name}}}`: the message has no field `{name}`")
                        })?;
                    }
                    match value {
                        Value::String(s) => out.push_str(s),
                        Value::Number(n) => out.push_str(&n.to_string()),
                        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                        _ => {
                            return Err(format!(
                                "`{{body.{name}}}`: field `{name}` is not a string, number or bool"
                            ))
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

fn field(name: &str) -> Result<Part, String> {
    if name == "subject" {
        return Ok(Part::Subject);
    }
    if let Some(path) = name.strip_prefix("body.") {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("`{{{name}}}` has an empty field name"));
        }
        return Ok(Part::Body(segments));
    }
    match name.parse::<usize>() {
        Ok(0) => Err("wildcards count from `{1}`".into()),
        Ok(n) => Ok(Part::Wildcard(n)),
        Err(_) => Err(format!(
            "unknown field `{{{name}}}`: use `{{1}}`..`{{n}}`, `{{subject}}` or `{{body.<field>}}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, body: Option<&Value>) -> Result<String, String> {
        let wildcards = vec!["42".to_owned(), "x.y".to_owned()];
        Template::parse(t)?.render(&Input {
            subject: "agents.42.events",
            wildcards: &wildcards,
            body,
        })
    }

    #[test]
    fn renders_wildcards_subject_and_body_fields() {
        let body = json!({"type": "tool.call", "n": 7, "ok": true, "meta": {"run": "r1"},
            "tags": ["a", "b"]});
        assert_eq!(render("agent:{1}", None).unwrap(), "agent:42");
        assert_eq!(render("{2}", None).unwrap(), "x.y");
        assert_eq!(render("{subject}", None).unwrap(), "agents.42.events");
        assert_eq!(render("{body.type}", Some(&body)).unwrap(), "tool.call");
        assert_eq!(
            render("n{body.n}-{body.ok}", Some(&body)).unwrap(),
            "n7-true"
        );
        assert_eq!(render("{body.meta.run}", Some(&body)).unwrap(), "r1");
        assert_eq!(render("{body.tags.1}", Some(&body)).unwrap(), "b");
        assert_eq!(render("{{lit}}", None).unwrap(), "{lit}");
        assert_eq!(render("agent.event", None).unwrap(), "agent.event");
    }

    #[test]
    fn missing_or_unusable_fields_are_named() {
        let body = json!({"type": null, "meta": {}});
        let e = render("{body.kind}", Some(&body)).unwrap_err();
        assert!(e.contains("no field `kind`"), "{e}");
        let e = render("{body.type}", Some(&body)).unwrap_err();
        assert!(e.contains("not a string"), "{e}");
        let e = render("{body.meta}", Some(&body)).unwrap_err();
        assert!(e.contains("not a string"), "{e}");
        let e = render("{body.type}", None).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let e = render("{3}", None).unwrap_err();
        assert!(e.contains("no such wildcard"), "{e}");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (bad, why) in [
            ("{0}", "from `{1}`"),
            ("{nope}", "unknown field"),
            ("{body.}", "empty field"),
            ("a{1", "not closed"),
            ("a}", "without"),
        ] {
            let e = Template::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let t = Template::parse("p:{2}:{1}:{body.x}").unwrap();
        assert_eq!(t.max_wildcard(), 2);
        assert!(t.uses_body());
    }
}
