//! Request lines of the admin socket: a JSON object, or the same request as words
//! (`reload web-lb`), the form `switchyard ctl` takes.

use serde_json::{Value, json};

/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// Parses one request line (without its newline) into a request object with a `cmd`.
pub fn parse_request(line: &str) -> Result<Value, String> {
    let text = line.trim();
    if text.is_empty() {
        return Err(
            "empty request; send a JSON object like {\"cmd\":\"status\"} or words like `status`"
                .into(),
        );
    }
    if text.len() > MAX_LINE {
        return Err(format!("request line longer than {MAX_LINE} bytes"));
    }
    if text.starts_with('{') {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
        if !value.get("cmd").is_some_and(Value::is_string) {
            return Err("missing \"cmd\"; try {\"cmd\":\"status\"}".into());
        }
        Ok(value)
    } else {
        words_to_request(&text.split_whitespace().collect::<Vec<_>>())
    }
}

/// Turns `ctl` words into a protocol request: `reload lb` → `{"cmd":"reload","plugin":"lb"}`.
pub fn words_to_request(words: &[&str]) -> Result<Value, String> {
    let usage = "commands: status | plugins | backends [POOL] | reload [PLUGIN] | drain POOL ADDR | undrain POOL ADDR | weight POOL ADDR N | shadow POOL | promote POOL | cache [NAME] | purge NAME KEY|PREFIX* | config reload";
    let request = match words {
        ["status"] => json!({ "cmd": "status" }),
        ["plugins"] => json!({ "cmd": "plugins" }),
        ["backends"] => json!({ "cmd": "backends" }),
        ["backends", pool] => json!({ "cmd": "backends", "pool": pool }),
        ["reload"] => json!({ "cmd": "reload" }),
        ["reload", plugin] => json!({ "cmd": "reload", "plugin": plugin }),
        ["drain", pool, addr] => json!({ "cmd": "drain", "pool": pool, "addr": addr }),
        ["undrain", pool, addr] => json!({ "cmd": "undrain", "pool": pool, "addr": addr }),
        ["weight", pool, addr, n] => {
            json!({ "cmd": "weight", "pool": pool, "addr": addr, "weight": n })
        }
        ["shadow", pool] => json!({ "cmd": "shadow", "pool": pool }),
        ["promote", pool] => json!({ "cmd": "promote", "pool": pool }),
        ["cache"] => json!({ "cmd": "cache" }),
        ["cache", name] => json!({ "cmd": "cache", "name": name }),
        ["purge", name, key] => json!({ "cmd": "purge", "name": name, "key": key }),
        ["config", "reload"] | ["config-reload"] => json!({ "cmd": "config-reload" }),
        [] => return Err(format!("no command; {usage}")),
        other => return Err(format!("unknown command `{}`; {usage}", other.join(" "))),
    };
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_words_give_the_same_request() {
        assert_eq!(
            parse_request("drain web 127.0.0.1:3001").unwrap(),
            parse_request(r#"{"cmd":"drain","pool":"web","addr":"127.0.0.1:3001"}"#).unwrap()
        );
        assert_eq!(
            parse_request("config reload").unwrap()["cmd"],
            "config-reload"
        );
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert!(
            parse_request("{\"cmd\": ")
                .unwrap_err()
                .starts_with("malformed JSON")
        );
        assert!(
            parse_request("{\"pool\": \"web\"}")
                .unwrap_err()
                .contains("missing \"cmd\"")
        );
        assert!(
            parse_request("launch rockets")
                .unwrap_err()
                .starts_with("unknown command `launch rockets`")
        );
        assert!(
            parse_request("   ")
                .unwrap_err()
                .starts_with("empty request")
        );
    }
}
