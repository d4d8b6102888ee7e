//! Chat templates: the Jinja template a model file carries (`tokenizer.chat_template`)
//! turned into the prompt text of a conversation, as Hugging Face's `apply_chat_template`
//! and llama-cpp-python render it.
//!
//! Rendering uses minijinja (a well-kept Jinja2 implementation in Rust, with its
//! `pycompat` methods such as `.strip()` that templates written for Python call): a
//! template language is not something to write again. The environment is configured as
//! the Python side's: `trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`,
//! and `bos_token` / `eos_token` / `add_generation_prompt` / `messages` in the context.

use std::fmt;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value, context};
use moe_core::gguf::File;

/// The metadata key of the default chat template.
pub const TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may know others).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl Message {
    /// A message of `role` with `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Why a conversation could not be rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatError {
    /// The file has no `tokenizer.chat_template`, or it is not a string.
    NoTemplate,
    /// The template does not parse, or failed while rendering (including the template's
    /// own `raise_exception`, for example for roles it does not accept).
    Template(String),
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatError::NoTemplate => write!(f, "no chat template ('{TEMPLATE_KEY}')"),
            ChatError::Template(why) => write!(f, "chat template: {why}"),
        }
    }
}

impl std::error::Error for ChatError {}

/// A parsed chat template with the special-token texts it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// `raise_exception(message)`: templates call it to refuse a conversation.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// A minijinja error with its cause chain (line numbers, the failing expression).
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl ChatTemplate {
    /// Parses `source`; `bos_token` and `eos_token` are the texts templates insert.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatError::Template(describe(&e)))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatError::Template(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template of `file` (`tokenizer.chat_template`), rendered with the texts of its
    /// BOS and EOS tokens (`bos_token` / `eos_token` are the token texts, as given).
    pub fn from_gguf(file: &File<'_>, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let source = file
            .get(TEMPLATE_KEY)
            .and_then(|v| v.as_str())
            .ok_or(ChatError::NoTemplate)?;
        Self::new(source, bos_token, eos_token)
    }

    /// The prompt text of `messages`; with `add_generation_prompt` it ends where the
    /// assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Template(describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => Value::from(self.bos_token.as_str()),
                eos_token => Value::from(self.eos_token.as_str()),
            })
            .map_err(|e| ChatError::Template(describe(&e)))
    }
}
