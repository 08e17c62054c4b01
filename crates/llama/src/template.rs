//! Chat templates rendered from the model's own Jinja source.
//!
//! llama.cpp's built-in `llama_chat_apply_template` only pattern-matches known formats and, for
//! SmolLM2, drops the default system prompt the real template adds (measured: 21 prompt tokens
//! instead of 42). Rendering `tokenizer.chat_template` with minijinja gives the prompt that
//! `llama-server --jinja` and Hugging Face produce, byte for byte.

use minijinja::{Environment, Error, ErrorKind, Value, context};

/// ChatML, used when a GGUF carries no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// A message as the template sees it: role and plain-text content.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TemplateMessage {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// Text content (array content is flattened to its text parts).
    pub content: String,
}

impl ChatTemplate {
    /// Compiles `source` (or ChatML when `None`).
    pub fn new(source: Option<&str>, bos: &str, eos: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        // Python string methods some templates call.
        env.set_unknown_method_callback(|_state, value, method, args| {
            let Some(s) = value.as_str() else {
                return Err(Error::from(ErrorKind::UnknownMethod));
            };
            let arg = |i: usize| args.get(i).and_then(|a| a.as_str()).map(str::to_owned);
            match method {
                "strip" => Ok(Value::from(s.trim())),
                "lstrip" => Ok(Value::from(s.trim_start())),
                "rstrip" => Ok(Value::from(s.trim_end())),
                "startswith" => Ok(Value::from(arg(0).is_some_and(|p| s.starts_with(&p)))),
                "endswith" => Ok(Value::from(arg(0).is_some_and(|p| s.ends_with(&p)))),
                "upper" => Ok(Value::from(s.to_uppercase())),
                "lower" => Ok(Value::from(s.to_lowercase())),
                _ => Err(Error::from(ErrorKind::UnknownMethod)),
            }
        });
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_owned())?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        })
    }

    /// Renders the conversation with the generation prompt appended.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, Error> {
        self.env.get_template("chat")?.render(context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => true,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
    }
}

/// Extracts template messages from an OpenAI `messages` array.
pub fn messages_from_json(v: &serde_json::Value) -> Vec<TemplateMessage> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let role = m
                .get("role")
                .and_then(|r| r.as_str())
                .unwrap_or("user")
                .to_owned();
            let content = match m.get("content") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                    .collect::<Vec<_>>()
                    .join(""),
                _ => String::new(),
            };
            TemplateMessage { role, content }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template (the GGUF's `tokenizer.chat_template`, whitespace as shipped).
    const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_default_system_prompt() {
        let t = ChatTemplate::new(Some(SMOL), "<|im_start|>", "<|im_end|>").unwrap();
        let msgs = messages_from_json(&serde_json::json!([{"role": "user", "content": "Hi"}]));
        assert_eq!(
            t.render(&msgs).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn chatml_fallback_parts_and_exceptions() {
        let t = ChatTemplate::new(None, "", "").unwrap();
        let msgs = messages_from_json(&serde_json::json!([
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
        ]));
        assert_eq!(
            t.render(&msgs).unwrap(),
            "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n"
        );
        let t = ChatTemplate::new(Some("{{ raise_exception('no tools') }}"), "", "").unwrap();
        assert!(
            t.render(&msgs)
                .unwrap_err()
                .to_string()
                .contains("no tools")
        );
        let t =
            ChatTemplate::new(Some("{{ messages[0].content.strip().upper() }}"), "", "").unwrap();
        let msgs = messages_from_json(&serde_json::json!([{"role": "user", "content": "  x "}]));
        assert_eq!(t.render(&msgs).unwrap(), "X");
        assert!(ChatTemplate::new(Some("{% if %}"), "", "").is_err());
    }
}
