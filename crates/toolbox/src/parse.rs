//! Syntax of the toolbox's tiny shell: turns a script into simple commands joined by `;`,
//! newlines, `&&` and `||`, with words split on whitespace and quoting/escapes removed.
//!
//! Kept apart from execution so that splitting, quoting and operator parsing are testable without
//! running anything, and so that a syntax error is reported before any command runs (as `sh` does).
//! Expansions (`$NAME`, `${NAME}`, `$?`, `$0`..`$9`) stay symbolic here: `$?` can only be known
//! when the command runs.

use std::fmt;

use crate::stdio::Stream;

/// A piece of a word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text, quotes and escapes already removed.
    Lit(String),
    /// `$NAME` or `${NAME}`: an environment variable (empty if unset).
    Var(String),
    /// `$0`..`$9`: a positional parameter (`$0` is the shell's name).
    Arg(usize),
    /// `$?`: the exit status of the last command.
    Status,
}

/// One word of a command, before expansion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Word {
    pub segments: Vec<Segment>,
    /// Whether any part was quoted or backslash-escaped. An unquoted word that expands to the
    /// empty string is dropped (so `echo $UNSET x` prints `x`); a quoted one stays (`''`).
    pub quoted: bool,
}

/// `N>&M`: the command's stream `from` is sent to wherever `to` currently goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    pub from: Stream,
    pub to: Stream,
}

/// A simple command: words (the first one names the command) and redirections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub words: Vec<Word>,
    pub redirects: Vec<Redirect>,
}

impl Command {
    fn is_empty(&self) -> bool {
        self.words.is_empty() && self.redirects.is_empty()
    }
}

/// How a command is joined to the one before it in an and-or list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// `&&`: run only if the previous status is 0.
    And,
    /// `||`: run only if the previous status is not 0.
    Or,
}

/// `first && second || third ...`, evaluated left to right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndOr {
    pub first: Command,
    pub rest: Vec<(Connector, Command)>,
}

/// A whole script: and-or lists separated by `;` or newlines.
pub type Script = Vec<AndOr>;

/// Why a script could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError(pub String);

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a script.
pub fn parse(src: &str) -> Result<Script, SyntaxError> {
    let tokens = Lexer::new(src).run()?;
    let mut script = Vec::new();
    // The and-or list being built, and the connector waiting for its right-hand command.
    let mut list: Option<AndOr> = None;
    let mut pending: Option<Connector> = None;
    let mut command = Command::default();

    for token in tokens {
        match token {
            Token::Word(word) => command.words.push(word),
            Token::Redirect(redirect) => command.redirects.push(redirect),
            Token::And | Token::Or => {
                let connector = if token == Token::And {
                    Connector::And
                } else {
                    Connector::Or
                };
                if command.is_empty() {
                    return Err(SyntaxError(format!("expected a command before `{}`", connector.text())));
                }
                attach(&mut list, pending, std::mem::take(&mut command));
                pending = Some(connector);
            }
            Token::Separator(separator) => {
                if command.is_empty() {
                    match pending {
                        // `a &&` followed by a newline continues on the next line, as in sh.
                        Some(_) if separator == '\n' => continue,
                        Some(connector) => {
                            return Err(SyntaxError(format!(
                                "expected a command after `{}`, found `;`",
                                connector.text()
                            )));
                        }
                        // Blank lines and stray `;` are harmless.
                        None => continue,
                    }
                }
                attach(&mut list, pending.take(), std::mem::take(&mut command));
                script.extend(list.take());
            }
        }
    }
    if command.is_empty() {
        if let Some(connector) = pending {
            return Err(SyntaxError(format!("expected a command after `{}`", connector.text())));
        }
    } else {
        attach(&mut list, pending, command);
    }
    script.extend(list);
    Ok(script)
}

/// Adds `command` to the and-or list being built (starting one if there is none).
fn attach(list: &mut Option<AndOr>, pending: Option<Connector>, command: Command) {
    match (list.as_mut(), pending) {
        (Some(list), Some(connector)) => list.rest.push((connector, command)),
        _ => {
            *list = Some(AndOr {
                first: command,
                rest: Vec::new(),
            })
        }
    }
}

impl Connector {
    fn text(self) -> &'static str {
        match self {
            Connector::And => "&&",
            Connector::Or => "||",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(Word),
    Redirect(Redirect),
    And,
    Or,
    /// `;` or a newline (the character, to tell them apart).
    Separator(char),
}

/// Splits a script into tokens, one character at a time.
struct Lexer {
    chars: Vec<char>,
    pos: usize,
    tokens: Vec<Token>,
    /// The word being accumulated, if one has started.
    word: Option<Word>,
}

fn error<T>(message: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(message.into()))
}

impl Lexer {
    fn new(src: &str) -> Self {
        Lexer {
            chars: src.chars().collect(),
            pos: 0,
            tokens: Vec::new(),
            word: None,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn word(&mut self) -> &mut Word {
        self.word.get_or_insert_with(Word::default)
    }

    fn literal(&mut self, c: char) {
        let word = self.word();
        match word.segments.last_mut() {
            Some(Segment::Lit(text)) => text.push(c),
            _ => word.segments.push(Segment::Lit(c.to_string())),
        }
    }

    fn finish_word(&mut self) {
        if let Some(word) = self.word.take() {
            self.tokens.push(Token::Word(word));
        }
    }

    fn operator(&mut self, token: Token) {
        self.finish_word();
        self.tokens.push(token);
    }

    fn run(mut self) -> Result<Vec<Token>, SyntaxError> {
        while let Some(c) = self.next() {
            match c {
                ' ' | '\t' | '\r' => self.finish_word(),
                '\n' | ';' => self.operator(Token::Separator(c)),
                '&' if self.peek() == Some('&') => {
                    self.pos += 1;
                    self.operator(Token::And);
                }
                '|' if self.peek() == Some('|') => {
                    self.pos += 1;
                    self.operator(Token::Or);
                }
                '&' => return error("background jobs (`&`) are not supported"),
                '|' => return error("pipes (`|`) are not supported"),
                '>' => self.redirect()?,
                '<' => return error("input redirection (`<`) is not supported"),
                '(' | ')' => return error("subshells and grouping (`(`, `)`) are not supported"),
                '`' => return error("command substitution is not supported"),
                '#' if self.word.is_none() => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                '\'' => {
                    self.word().quoted = true;
                    loop {
                        match self.next() {
                            None => return error("unterminated single quote"),
                            Some('\'') => break,
                            Some(c) => self.literal(c),
                        }
                    }
                }
                '"' => self.double_quoted()?,
                '\\' => match self.next() {
                    None => self.literal('\\'),
                    // Line continuation: both characters disappear.
                    Some('\n') => {}
                    Some(c) => {
                        self.word().quoted = true;
                        self.literal(c);
                    }
                },
                '$' => self.dollar()?,
                c => self.literal(c),
            }
        }
        self.finish_word();
        Ok(self.tokens)
    }

    /// The rest of a `"..."` string, whose opening quote was just consumed.
    fn double_quoted(&mut self) -> Result<(), SyntaxError> {
        self.word().quoted = true;
        loop {
            match self.next() {
                None => return error("unterminated double quote"),
                Some('"') => return Ok(()),
                Some('\\') => match self.peek() {
                    Some(c @ ('$' | '`' | '"' | '\\')) => {
                        self.pos += 1;
                        self.literal(c);
                    }
                    Some('\n') => self.pos += 1,
                    // Elsewhere a backslash inside double quotes is literal.
                    _ => self.literal('\\'),
                },
                Some('$') => self.dollar()?,
                Some('`') => return error("command substitution is not supported"),
                Some(c) => self.literal(c),
            }
        }
    }

    /// An expansion whose `$` was just consumed; a `$` not followed by a name stays literal.
    fn dollar(&mut self) -> Result<(), SyntaxError> {
        let segment = match self.peek() {
            Some('?') => {
                self.pos += 1;
                Segment::Status
            }
            Some(c) if c.is_ascii_digit() => {
                self.pos += 1;
                Segment::Arg(c as usize - '0' as usize)
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => Segment::Var(self.name()),
            Some('{') => {
                self.pos += 1;
                let mut inner = String::new();
                loop {
                    match self.next() {
                        None => return error("unterminated `${`"),
                        Some('}') => break,
                        Some(c) => inner.push(c),
                    }
                }
                let mut chars = inner.chars();
                match (chars.next(), chars.as_str()) {
                    (Some('?'), "") => Segment::Status,
                    (Some(c), "") if c.is_ascii_digit() => Segment::Arg(c as usize - '0' as usize),
                    (Some(c), rest)
                        if (c == '_' || c.is_ascii_alphabetic())
                            && rest.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) =>
                    {
                        Segment::Var(inner)
                    }
                    _ => return error(format!("bad substitution: ${{{inner}}}")),
                }
            }
            Some('(') => return error("command substitution (`$(...)`) is not supported"),
            _ => {
                self.literal('$');
                return Ok(());
            }
        };
        self.word().segments.push(segment);
        Ok(())
    }

    /// A variable name: `[A-Za-z_][A-Za-z0-9_]*`.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|&c| c == '_' || c.is_ascii_alphanumeric()) {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    /// `>&1` / `>&2`, optionally preceded by the stream number `1` or `2`; the `>` was just consumed.
    fn redirect(&mut self) -> Result<(), SyntaxError> {
        let digit = |word: &Word, text: &str| !word.quoted && word.segments == [Segment::Lit(text.to_string())];
        let from = match &self.word {
            Some(word) if digit(word, "1") => Some(Stream::Stdout),
            Some(word) if digit(word, "2") => Some(Stream::Stderr),
            _ => None,
        };
        if from.is_some() {
            self.word = None;
        } else {
            self.finish_word();
        }
        let unsupported = "only `>&1` and `>&2` redirections (optionally `1>&...`/`2>&...`) are supported";
        if self.next() != Some('&') {
            return error(unsupported);
        }
        let to = match self.next() {
            Some('1') => Stream::Stdout,
            Some('2') => Stream::Stderr,
            _ => return error(unsupported),
        };
        if self.peek().is_some_and(|c| !(c.is_whitespace() || ";&|".contains(c))) {
            return error(unsupported);
        }
        self.tokens.push(Token::Redirect(Redirect {
            from: from.unwrap_or(Stream::Stdout),
            to,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(text: &str) -> Word {
        Word {
            segments: vec![Segment::Lit(text.into())],
            quoted: false,
        }
    }

    fn quoted(text: &str) -> Word {
        Word {
            segments: vec![Segment::Lit(text.into())],
            quoted: true,
        }
    }

    fn cmd(words: &[&str]) -> Command {
        Command {
            words: words.iter().map(|w| lit(w)).collect(),
            redirects: Vec::new(),
        }
    }

    fn single(src: &str) -> Command {
        let mut script = parse(src).unwrap();
        assert_eq!(script.len(), 1, "{src:?} parsed to {script:?}");
        let list = script.remove(0);
        assert!(list.rest.is_empty(), "{src:?} parsed to {list:?}");
        list.first
    }

    fn syntax_error(src: &str) -> String {
        match parse(src) {
            Err(SyntaxError(message)) => message,
            Ok(script) => panic!("{src:?} parsed to {script:?}"),
        }
    }

    #[test]
    fn words_are_split_on_whitespace() {
        assert_eq!(single("  echo\ta   b\r"), cmd(&["echo", "a", "b"]));
    }

    #[test]
    fn quotes_and_backslashes_join_and_protect() {
        let command = single(r#"echo 'a b' "c  d" e\ f x'y'"z" '' """#);
        let texts: Vec<_> = command.words.iter().map(|w| (w.segments.clone(), w.quoted)).collect();
        assert_eq!(
            texts,
            vec![
                (vec![Segment::Lit("echo".into())], false),
                (vec![Segment::Lit("a b".into())], true),
                (vec![Segment::Lit("c  d".into())], true),
                (vec![Segment::Lit("e f".into())], true),
                (vec![Segment::Lit("xyz".into())], true),
                (vec![], true),
                (vec![], true),
            ]
        );
    }

    #[test]
    fn operators_inside_quotes_are_literal() {
        assert_eq!(
            single(r#"echo 'a;b' "c && d" e\;f '>&2' "#),
            Command {
                words: vec![
                    lit("echo"),
                    quoted("a;b"),
                    quoted("c && d"),
                    quoted("e;f"),
                    quoted(">&2")
                ],
                redirects: vec![]
            }
        );
    }

    #[test]
    fn backslash_rules_differ_inside_double_quotes() {
        assert_eq!(single(r#"echo "a\"b\\c\$d\e""#).words[1], quoted(r#"a"b\c$d\e"#));
        assert_eq!(single(r"echo 'a\b'").words[1], quoted(r"a\b"));
        assert_eq!(single("echo a\\\nb").words[1], lit("ab"));
        assert_eq!(single("echo \\$HOME").words[1], quoted("$HOME"));
    }

    #[test]
    fn sequences_and_and_or_lists() {
        let script = parse("a 1; b && c || d\ne\n\n;f").unwrap();
        assert_eq!(
            script,
            vec![
                AndOr {
                    first: cmd(&["a", "1"]),
                    rest: vec![]
                },
                AndOr {
                    first: cmd(&["b"]),
                    rest: vec![(Connector::And, cmd(&["c"])), (Connector::Or, cmd(&["d"]))]
                },
                AndOr {
                    first: cmd(&["e"]),
                    rest: vec![]
                },
                AndOr {
                    first: cmd(&["f"]),
                    rest: vec![]
                },
            ]
        );
        // Operators need no surrounding spaces, and a newline may follow `&&`.
        assert_eq!(parse("a&&b||c;d").unwrap(), parse("a && b || c ; d").unwrap());
        assert_eq!(parse("a &&\n  b").unwrap(), parse("a && b").unwrap());
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse(" ;\n").unwrap(), vec![]);
    }

    #[test]
    fn comments_run_to_the_end_of_the_line() {
        assert_eq!(parse("a # b; c\nd").unwrap(), parse("a\nd").unwrap());
        assert_eq!(single("echo a#b"), cmd(&["echo", "a#b"]));
    }

    #[test]
    fn expansions_are_kept_symbolic() {
        let command = single(r#"echo $HOME "${USER}x" '$NOPE' $? a$B_1-c $1 ${0} $ a$"#);
        let segments: Vec<_> = command.words.iter().map(|w| w.segments.clone()).collect();
        use Segment::*;
        assert_eq!(
            segments,
            vec![
                vec![Lit("echo".into())],
                vec![Var("HOME".into())],
                vec![Var("USER".into()), Lit("x".into())],
                vec![Lit("$NOPE".into())],
                vec![Status],
                vec![Lit("a".into()), Var("B_1".into()), Lit("-c".into())],
                vec![Arg(1)],
                vec![Arg(0)],
                vec![Lit("$".into())],
                vec![Lit("a$".into())],
            ]
        );
        assert!(!command.words[1].quoted);
        assert!(command.words[2].quoted);
    }

    #[test]
    fn redirections_between_stdout_and_stderr() {
        let to_err = Redirect {
            from: Stream::Stdout,
            to: Stream::Stderr,
        };
        let err_to_out = Redirect {
            from: Stream::Stderr,
            to: Stream::Stdout,
        };
        for src in ["echo a >&2", "echo a 1>&2", "echo a>&2", ">&2 echo a"] {
            assert_eq!(
                single(src),
                Command {
                    words: vec![lit("echo"), lit("a")],
                    redirects: vec![to_err]
                },
                "{src}"
            );
        }
        assert_eq!(
            single("cmd 2>&1 x"),
            Command {
                words: vec![lit("cmd"), lit("x")],
                redirects: vec![err_to_out]
            }
        );
        // A quoted or longer word before `>` is an argument, not a stream number.
        assert_eq!(single("echo '1'>&2").words, vec![lit("echo"), quoted("1")]);
        assert_eq!(single("echo 12>&2").words, vec![lit("echo"), lit("12")]);
        assert_eq!(parse("echo a >&2; echo b").unwrap()[1].first, cmd(&["echo", "b"]));
    }

    #[test]
    fn unsupported_or_broken_syntax_is_rejected() {
        assert_eq!(syntax_error("echo 'abc"), "unterminated single quote");
        assert_eq!(syntax_error("echo \"abc"), "unterminated double quote");
        assert_eq!(syntax_error("echo ${A"), "unterminated `${`");
        assert_eq!(syntax_error("echo ${A:-b}"), "bad substitution: ${A:-b}");
        assert_eq!(syntax_error("&& echo"), "expected a command before `&&`");
        assert_eq!(syntax_error("a || ; b"), "expected a command after `||`, found `;`");
        assert_eq!(syntax_error("a &&"), "expected a command after `&&`");
        assert!(syntax_error("a | b").contains("pipes"));
        assert!(syntax_error("sleep 1 &").contains("background"));
        assert!(syntax_error("echo a > file").contains("redirections"));
        assert!(syntax_error("echo a >&2x").contains("redirections"));
        assert!(syntax_error("cat < file").contains("input redirection"));
        assert!(syntax_error("echo $(date)").contains("command substitution"));
        assert!(syntax_error("echo `date`").contains("command substitution"));
        assert!(syntax_error("(echo a)").contains("subshells"));
    }
}
