//! What every command starts from: the global flags, the settings resolved from them, and the output
//! format. Commands connect through it when they are ready to, so one that reads a local file first
//! fails on a bad file without a server.

use crate::client::{self, Api, Flags, Settings};
use crate::failure::Failure;
use crate::output::Format;

/// The flags and settings a command runs with.
pub struct Context {
    /// The global flags as given, to resolve the settings again on a reconnection.
    pub flags: Flags,
    /// The settings resolved from the flags, env and config file.
    pub settings: Settings,
    /// How results are printed.
    pub format: Format,
}

impl Context {
    /// The namespace to act in.
    pub fn namespace(&self) -> String {
        self.settings.namespace.clone()
    }

    /// Connects to the server the settings name.
    pub async fn connect(&self) -> Result<Api, Failure> {
        client::connect(&self.settings).await
    }
}
