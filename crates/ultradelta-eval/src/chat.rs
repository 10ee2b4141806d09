//! The chat format of a LLaMA model folder and the tokenization of prompt/response pairs.
//!
//! Training (`xtask/python/finetune_llama.py`) and evaluation use the token ids written by
//! [`tokenize_pair`], so both see the same sequences: the prompt in the model's chat template, then the response
//! and the end-of-turn token, the loss taken on the response part only.
//!
//! Only ChatML templates (`<|im_start|>role\ncontent<|im_end|>\n`, as SmolLM2's) are recognised; their default
//! system message, when the template inserts one, is read from the template text. No Jinja engine is involved:
//! [`ChatFormat::from_template`] refuses any other template.

use std::path::Path;

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Start of a ChatML turn.
pub const IM_START: &str = "<|im_start|>";
/// End of a ChatML turn.
pub const IM_END: &str = "<|im_end|>";

/// A ChatML conversation format with an optional default system message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatFormat {
    /// The system message the template inserts when the conversation has none.
    pub system: Option<String>,
}

impl ChatFormat {
    /// Recognises a ChatML Jinja template and reads its default system message.
    pub fn from_template(template: &str) -> std::result::Result<Self, String> {
        for needle in [
            IM_START,
            IM_END,
            "message['role']",
            "message['content']",
            "add_generation_prompt",
        ] {
            if !template.contains(needle) {
                return Err(format!("chat template is not ChatML (no {needle:?} in it)"));
            }
        }
        if !template.contains(&format!("{IM_START}assistant\n")) {
            return Err(
                "chat template is not ChatML (no \"<|im_start|>assistant\\n\" generation prompt)"
                    .into(),
            );
        }
        let head = format!("{IM_START}system\n");
        let system = match template.find(&head) {
            None => None,
            Some(at) => {
                let rest = &template[at + head.len()..];
                let end = rest.find(IM_END).ok_or_else(|| {
                    "chat template's default system message has no <|im_end|>".to_string()
                })?;
                Some(rest[..end].to_string())
            }
        };
        Ok(Self { system })
    }

    /// Reads `chat_template` from `tokenizer_config.json` in a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let err = |reason: String| Error::Llama {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            op: "read",
            source,
        })?;
        let v: Json = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
        let t = v["chat_template"]
            .as_str()
            .ok_or_else(|| err("no \"chat_template\" string".into()))?;
        Self::from_template(t).map_err(err)
    }

    /// The text before the response: system turn (if any), the user turn and the assistant header.
    pub fn prompt(&self, user: &str) -> String {
        let mut s = String::new();
        if let Some(sys) = &self.system {
            s.push_str(&format!("{IM_START}system\n{sys}{IM_END}\n"));
        }
        s.push_str(&format!(
            "{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"
        ));
        s
    }

    /// The response text the model is trained to produce: the response and the end-of-turn token.
    pub fn response(&self, text: &str) -> String {
        format!("{text}{IM_END}")
    }
}

/// A tokenized prompt/response pair: `ids[..prompt_len]` is the prompt, the rest the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    /// All token ids.
    pub ids: Vec<u32>,
    /// How many of them are the prompt.
    pub prompt_len: usize,
}

/// Tokenizes a pair in `chat` format (prompt and response separately, so the boundary is exact), cut to
/// `max_tokens` at the end of the response. None when the prompt alone leaves no room for a response token.
pub fn tokenize_pair(
    tok: &Tokenizer,
    chat: &ChatFormat,
    prompt: &str,
    response: &str,
    max_tokens: usize,
) -> Result<Option<TokenizedPair>> {
    let mut ids = crate::llama::encode(tok, &chat.prompt(prompt))?;
    let prompt_len = ids.len();
    if prompt_len + 1 > max_tokens {
        return Ok(None);
    }
    ids.extend(crate::llama::encode(tok, &chat.response(response))?);
    ids.truncate(max_tokens);
    Ok(Some(TokenizedPair { ids, prompt_len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_with_default_system_message() {
        let chat = ChatFormat::from_template(SMOL).expect("ChatML");
        assert_eq!(
            chat.system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(
            chat.prompt("Hi?"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(chat.response("Hello."), "Hello.<|im_end|>");
    }

    #[test]
    fn other_templates_are_refused() {
        let llama2 =
            "{% for message in messages %}[INST] {{ message['content'] }} [/INST]{% endfor %}";
        assert!(ChatFormat::from_template(llama2)
            .unwrap_err()
            .contains("ChatML"));
        let no_system = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let chat = ChatFormat::from_template(no_system).expect("ChatML");
        assert_eq!(chat.system, None);
        assert_eq!(
            chat.prompt("x"),
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
