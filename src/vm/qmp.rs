//! QMP over a unix socket: the closed set of VM actions, encoded with the
//! qapi crate's command types, and a tolerant reader of QEMU's messages.
//!
//! qapi's own stream gives up for good on an event or enum value its schema
//! does not know; a newer QEMU must not break a running job, so each line is
//! parsed here: known events through qapi's `Event`, anything else kept as a
//! name.

use std::collections::VecDeque;
use std::path::Path;

use qapi::qmp;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::VmError;

/// Everything kiln asks of a running VM (firecracker style: one closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    /// Leave capabilities negotiation mode (`qmp_capabilities`).
    Negotiate,
    /// Start the vCPUs of a VM launched paused (`cont`).
    Start,
    /// End QEMU now (`quit`), on kill or timeout.
    Quit,
}

impl VmAction {
    /// The QMP command line for this action, tagged with `id`.
    pub fn to_command(self, id: u64) -> Value {
        match self {
            VmAction::Negotiate => execute(&qmp::qmp_capabilities { enable: None }, id),
            VmAction::Start => execute(&qmp::cont {}, id),
            VmAction::Quit => execute(&qmp::quit {}, id),
        }
    }
}

fn execute<C: qapi::Command>(command: &C, id: u64) -> Value {
    json!({ "execute": C::NAME, "arguments": command, "id": id })
}

/// Why the guest stopped, as QEMU's `SHUTDOWN` event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown {
    /// `true` when the guest itself asked (power-off, reset, panic).
    pub guest: bool,
    /// QEMU's `ShutdownCause` name, e.g. `guest-shutdown`, `guest-reset`,
    /// `guest-panic`, `host-qmp-quit`; kept as text so causes added by a
    /// newer QEMU pass through.
    pub reason: String,
}

impl Shutdown {
    /// A clean power-off from inside the guest.
    pub fn is_poweroff(&self) -> bool {
        self.reason == "guest-shutdown"
    }
}

/// One event from QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpEvent {
    Shutdown(Shutdown),
    /// Any other event, known to qapi or not.
    Other {
        name: String,
    },
}

/// One line from QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpMessage {
    Greeting {
        version: String,
    },
    Return {
        id: Option<u64>,
    },
    Error {
        id: Option<u64>,
        class: String,
        desc: String,
    },
    Event(QmpEvent),
    /// Valid JSON of no known shape, or not JSON at all: skipped, never fatal.
    Unrecognized(String),
}

/// Classifies one line of QMP output; never fails.
pub fn parse_line(line: &str) -> QmpMessage {
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return QmpMessage::Unrecognized(line.to_owned());
    };
    let Some(object) = value.as_object() else {
        return QmpMessage::Unrecognized(line.to_owned());
    };
    let id = object.get("id").and_then(Value::as_u64);
    if object.contains_key("QMP") {
        let version = match serde_json::from_value::<qmp::QapiCapabilities>(value.clone()) {
            Ok(greeting) => {
                let q = &greeting.QMP.version.qemu;
                format!("{}.{}.{}", q.major, q.minor, q.micro)
            }
            Err(_) => "unknown".to_owned(),
        };
        return QmpMessage::Greeting { version };
    }
    if object.contains_key("return") {
        return QmpMessage::Return { id };
    }
    if let Some(error) = object.get("error") {
        let text = |key: &str| {
            error
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        return QmpMessage::Error {
            id,
            class: text("class"),
            desc: text("desc"),
        };
    }
    if let Some(name) = object.get("event").and_then(Value::as_str) {
        return QmpMessage::Event(parse_event(name, &value));
    }
    QmpMessage::Unrecognized(line.to_owned())
}

fn parse_event(name: &str, value: &Value) -> QmpEvent {
    match serde_json::from_value::<qmp::Event>(value.clone()) {
        Ok(qmp::Event::SHUTDOWN { data, .. }) => {
            let reason = serde_json::to_value(data.reason)
                .ok()
                .and_then(|reason| reason.as_str().map(str::to_owned))
                .unwrap_or_default();
            QmpEvent::Shutdown(Shutdown {
                guest: data.guest,
                reason,
            })
        }
        Ok(_) => QmpEvent::Other {
            name: name.to_owned(),
        },
        // A SHUTDOWN with a cause this qapi does not know still ends the VM.
        Err(_) if name == "SHUTDOWN" => {
            let data = value.get("data");
            QmpEvent::Shutdown(Shutdown {
                guest: data
                    .and_then(|d| d.get("guest"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                reason: data
                    .and_then(|d| d.get("reason"))
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_owned(),
            })
        }
        Err(_) => QmpEvent::Other {
            name: name.to_owned(),
        },
    }
}

/// A negotiated QMP connection.
pub struct QmpClient {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// Events that arrived while waiting for a reply.
    events: VecDeque<QmpEvent>,
    pub qemu_version: String,
}

impl QmpClient {
    /// Connects, reads the greeting and leaves negotiation mode.
    pub async fn connect(socket: &Path) -> Result<QmpClient, VmError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| VmError::Qmp {
                reason: format!("cannot connect to {}: {source}", socket.display()),
            })?;
        QmpClient::handshake(stream).await
    }

    /// Reads the greeting on a connected socket and leaves negotiation mode.
    pub async fn handshake(stream: UnixStream) -> Result<QmpClient, VmError> {
        let (read, writer) = stream.into_split();
        let mut client = QmpClient {
            lines: BufReader::new(read).lines(),
            writer,
            next_id: 1,
            events: VecDeque::new(),
            qemu_version: String::new(),
        };
        loop {
            match client.next_message().await? {
                Some(QmpMessage::Greeting { version }) => {
                    client.qemu_version = version;
                    break;
                }
                Some(_) => continue,
                None => return Err(closed_early("before its greeting")),
            }
        }
        client.execute(VmAction::Negotiate).await?;
        Ok(client)
    }

    /// Sends `action` and waits for its reply; events meanwhile are queued.
    pub async fn execute(&mut self, action: VmAction) -> Result<(), VmError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = action.to_command(id).to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| VmError::Qmp {
                reason: format!("cannot send {action:?}: {source}"),
            })?;
        loop {
            match self.next_message().await? {
                Some(QmpMessage::Return { id: Some(got) }) if got == id => return Ok(()),
                Some(QmpMessage::Error {
                    id: Some(got),
                    class,
                    desc,
                }) if got == id => {
                    return Err(VmError::Qmp {
                        reason: format!("{action:?} refused: {class}: {desc}"),
                    });
                }
                Some(QmpMessage::Event(event)) => self.events.push_back(event),
                Some(_) => continue,
                None => {
                    return Err(closed_early(&format!(
                        "waiting for the reply to {action:?}"
                    )));
                }
            }
        }
    }

    /// Asks QEMU to quit. The `SHUTDOWN` event may come before the reply,
    /// and the socket may close before either: all of these are success.
    pub async fn quit(&mut self) -> Result<(), VmError> {
        match self.execute(VmAction::Quit).await {
            Ok(()) => Ok(()),
            Err(VmError::Qmp { reason }) if reason.contains("closed") => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The next event; `None` once QEMU closed the socket. Cancel safe.
    pub async fn next_event(&mut self) -> Result<Option<QmpEvent>, VmError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        loop {
            match self.next_message().await? {
                Some(QmpMessage::Event(event)) => return Ok(Some(event)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    async fn next_message(&mut self) -> Result<Option<QmpMessage>, VmError> {
        match self.lines.next_line().await {
            Ok(Some(line)) => Ok(Some(parse_line(&line))),
            Ok(None) => Ok(None),
            Err(source) => Err(VmError::Qmp {
                reason: format!("reading the QMP socket: {source}"),
            }),
        }
    }
}

fn closed_early(when: &str) -> VmError {
    VmError::Qmp {
        reason: format!("QEMU closed the QMP socket {when}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from QEMU 7.2.22 (`qemu-system-x86_64 -M microvm -S -qmp
    // unix:...`), one job: greeting, negotiation, cont, power-off, quit.
    const TRANSCRIPT: &str = include_str!("testdata/qmp-transcript.jsonl");

    #[test]
    fn a_real_transcript_parses() {
        let messages: Vec<QmpMessage> = TRANSCRIPT.lines().map(parse_line).collect();
        assert!(
            matches!(&messages[0], QmpMessage::Greeting { version } if version.starts_with("7.2"))
        );
        assert!(messages.contains(&QmpMessage::Return { id: Some(1) }));
        assert!(messages.iter().any(|message| matches!(
            message,
            QmpMessage::Event(QmpEvent::Shutdown(Shutdown { guest: true, reason })) if reason == "guest-shutdown"
        )));
        assert!(
            !messages
                .iter()
                .any(|message| matches!(message, QmpMessage::Unrecognized(_)))
        );
    }

    #[test]
    fn unknown_events_and_causes_do_not_break_the_reader() {
        let future_event = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "VFIO_MIGRATION", "data": {"device": "x"}}"#;
        assert_eq!(
            parse_line(future_event),
            QmpMessage::Event(QmpEvent::Other {
                name: "VFIO_MIGRATION".into()
            })
        );

        let future_cause = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-teleported"}}"#;
        assert_eq!(
            parse_line(future_cause),
            QmpMessage::Event(QmpEvent::Shutdown(Shutdown {
                guest: true,
                reason: "guest-teleported".into()
            }))
        );

        assert!(matches!(
            parse_line("not json"),
            QmpMessage::Unrecognized(_)
        ));
        assert!(matches!(parse_line("[1, 2]"), QmpMessage::Unrecognized(_)));
    }

    #[test]
    fn errors_keep_their_id_and_text() {
        let line = r#"{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#;
        assert_eq!(
            parse_line(line),
            QmpMessage::Error {
                id: Some(3),
                class: "CommandNotFound".into(),
                desc: "The command nope has not been found".into()
            }
        );
    }

    #[test]
    fn actions_encode_as_qmp_commands() {
        assert_eq!(
            VmAction::Negotiate.to_command(1)["execute"],
            "qmp_capabilities"
        );
        assert_eq!(
            VmAction::Start.to_command(2),
            json!({"execute": "cont", "arguments": {}, "id": 2})
        );
        assert_eq!(VmAction::Quit.to_command(3)["execute"], "quit");
    }
}
