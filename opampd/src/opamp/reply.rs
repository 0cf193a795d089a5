//! The one way to build a ServerToAgent.
//!
//! The transports send only [`Reply`], whose message can be made only here, so
//! the reply rules hold by construction rather than by convention:
//!
//! - every reply echoes the instance uid it answers (empty only when the
//!   message could not be decoded at all);
//! - every reply except an error carries [`SERVER_CAPABILITIES`];
//! - an error (`error_response`) goes alone: the uid and the error, nothing else;
//! - a command goes alone: the uid, the capabilities and the command.
//!
//! [`Reply`] derefs to the message for reading (tests, logs, encoding).

use opamp_proto::caps::{
    SERVER_ACCEPTS_EFFECTIVE_CONFIG, SERVER_ACCEPTS_PACKAGES_STATUS, SERVER_ACCEPTS_STATUS,
    SERVER_OFFERS_CONNECTION_SETTINGS, SERVER_OFFERS_PACKAGES, SERVER_OFFERS_REMOTE_CONFIG,
};
use opamp_proto::pb;
use std::time::Duration;

/// Server capabilities announced in every reply that is not an error.
pub const SERVER_CAPABILITIES: u64 = SERVER_ACCEPTS_STATUS
    | SERVER_OFFERS_REMOTE_CONFIG
    | SERVER_ACCEPTS_EFFECTIVE_CONFIG
    | SERVER_OFFERS_CONNECTION_SETTINGS
    | SERVER_OFFERS_PACKAGES
    | SERVER_ACCEPTS_PACKAGES_STATUS;

/// A ServerToAgent built by one of the constructors below; what the
/// transports send.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply(pb::ServerToAgent);

/// What a normal reply carries besides the uid and the capabilities.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Answer {
    /// `ServerToAgentFlags` bits (ReportFullState).
    pub flags: u64,
    pub remote_config: Option<pb::AgentRemoteConfig>,
    /// A new instance uid for the agent to use from now on.
    pub new_instance_uid: Option<[u8; 16]>,
    /// Connection settings (`opamp::connection`).
    pub connection_settings: Option<pb::ConnectionSettingsOffers>,
    /// Packages (`opamp::packages`).
    pub packages_available: Option<pb::PackagesAvailable>,
}

/// A command for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Restart,
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The message is wrong; sending it again will not help.
    BadRequest,
    /// The server cannot handle it now; retry, after `retry_after` if given.
    Unavailable { retry_after: Option<Duration> },
}

impl Reply {
    /// The normal reply to a message, or a message the server pushes.
    pub fn answer(instance_uid: Vec<u8>, answer: Answer) -> Reply {
        Reply(pb::ServerToAgent {
            instance_uid,
            capabilities: SERVER_CAPABILITIES,
            flags: answer.flags,
            remote_config: answer.remote_config,
            connection_settings: answer.connection_settings,
            packages_available: answer.packages_available,
            agent_identification: answer.new_instance_uid.map(|uid| pb::AgentIdentification {
                new_instance_uid: uid.to_vec(),
            }),
            ..Default::default()
        })
    }

    /// A reply with nothing to say but the capabilities.
    pub fn ack(instance_uid: Vec<u8>) -> Reply {
        Reply::answer(instance_uid, Answer::default())
    }

    /// A command, alone with the uid and the capabilities.
    pub fn command(instance_uid: Vec<u8>, command: Command) -> Reply {
        let r#type = match command {
            Command::Restart => pb::CommandType::Restart,
        };
        Reply(pb::ServerToAgent {
            instance_uid,
            capabilities: SERVER_CAPABILITIES,
            command: Some(pb::ServerToAgentCommand {
                r#type: r#type as i32,
            }),
            ..Default::default()
        })
    }

    /// An error reply: the uid and the error, nothing else.
    pub fn error(instance_uid: Vec<u8>, refusal: Refusal, message: String) -> Reply {
        let (r#type, details) = match refusal {
            Refusal::BadRequest => (pb::ServerErrorResponseType::BadRequest, None),
            Refusal::Unavailable { retry_after } => (
                pb::ServerErrorResponseType::Unavailable,
                retry_after.map(|after| {
                    pb::server_error_response::Details::RetryInfo(pb::RetryInfo {
                        retry_after_nanoseconds: u64::try_from(after.as_nanos())
                            .unwrap_or(u64::MAX),
                    })
                }),
            ),
        };
        Reply(pb::ServerToAgent {
            instance_uid,
            error_response: Some(pb::ServerErrorResponse {
                r#type: r#type as i32,
                error_message: message,
                details,
            }),
            ..Default::default()
        })
    }

    /// A BAD_REQUEST error reply.
    pub fn bad_request(instance_uid: Vec<u8>, message: String) -> Reply {
        Reply::error(instance_uid, Refusal::BadRequest, message)
    }

    /// Bytes of the largest answer that can carry `remote_config` (every
    /// flag, a new instance uid): an offer fits the send limit when this does.
    pub fn largest_offer_len(remote_config: &pb::AgentRemoteConfig) -> usize {
        let rest = Reply::answer(
            vec![0; 16],
            Answer {
                flags: u64::MAX,
                new_instance_uid: Some([0; 16]),
                ..Default::default()
            },
        );
        // ServerToAgent.remote_config is field 3.
        prost::Message::encoded_len(&rest.0)
            + prost::encoding::message::encoded_len(3, remote_config)
    }

    /// The same reply without what can make it large (the remote config and
    /// package offers): what is sent when the whole would exceed the send limit.
    pub fn without_offers(mut self) -> Reply {
        self.0.remote_config = None;
        self.0.packages_available = None;
        self
    }
}

impl std::ops::Deref for Reply {
    type Target = pb::ServerToAgent;

    fn deref(&self) -> &pb::ServerToAgent {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_proto::caps::FLAG_REPORT_FULL_STATE;

    fn offer() -> pb::AgentRemoteConfig {
        pb::AgentRemoteConfig {
            config: Some(pb::AgentConfigMap::default()),
            config_hash: vec![9; 32],
        }
    }

    #[test]
    fn an_answer_echoes_the_uid_and_carries_the_capabilities() {
        let reply = Reply::answer(
            vec![1; 16],
            Answer {
                flags: FLAG_REPORT_FULL_STATE,
                remote_config: Some(offer()),
                new_instance_uid: Some([2; 16]),
                connection_settings: Some(pb::ConnectionSettingsOffers {
                    hash: vec![3; 32],
                    ..Default::default()
                }),
                packages_available: Some(pb::PackagesAvailable {
                    all_packages_hash: vec![4; 32],
                    ..Default::default()
                }),
            },
        );
        assert_eq!(
            reply.packages_available.as_ref().unwrap().all_packages_hash,
            vec![4; 32]
        );
        assert_eq!(reply.instance_uid, vec![1; 16]);
        assert_eq!(reply.capabilities, SERVER_CAPABILITIES);
        assert_eq!(reply.flags, FLAG_REPORT_FULL_STATE);
        assert_eq!(reply.remote_config, Some(offer()));
        assert_eq!(
            reply
                .agent_identification
                .as_ref()
                .unwrap()
                .new_instance_uid,
            vec![2; 16]
        );
        assert_eq!(
            reply.connection_settings.as_ref().unwrap().hash,
            vec![3; 32]
        );
        assert!(reply.command.is_none() && reply.error_response.is_none());
        let ack = Reply::ack(vec![3; 16]);
        assert_eq!(
            (ack.instance_uid.as_slice(), ack.capabilities, ack.flags),
            (&[3; 16][..], SERVER_CAPABILITIES, 0)
        );
    }

    #[test]
    fn a_command_goes_alone_with_the_uid_and_capabilities() {
        let reply = Reply::command(vec![1; 16], Command::Restart);
        let expected = pb::ServerToAgent {
            instance_uid: vec![1; 16],
            capabilities: SERVER_CAPABILITIES,
            command: Some(pb::ServerToAgentCommand {
                r#type: pb::CommandType::Restart as i32,
            }),
            ..Default::default()
        };
        assert_eq!(*reply, expected);
    }

    #[test]
    fn an_error_goes_alone_with_only_the_uid() {
        let reply = Reply::bad_request(vec![1; 16], "wrong".into());
        let expected = pb::ServerToAgent {
            instance_uid: vec![1; 16],
            error_response: Some(pb::ServerErrorResponse {
                r#type: pb::ServerErrorResponseType::BadRequest as i32,
                error_message: "wrong".into(),
                details: None,
            }),
            ..Default::default()
        };
        assert_eq!(*reply, expected);
        let busy = Reply::error(
            Vec::new(),
            Refusal::Unavailable {
                retry_after: Some(Duration::from_secs(3)),
            },
            "busy".into(),
        );
        assert_eq!(busy.capabilities, 0);
        let error = busy.error_response.as_ref().unwrap();
        assert_eq!(
            error.r#type,
            pb::ServerErrorResponseType::Unavailable as i32
        );
        assert_eq!(
            error.details,
            Some(pb::server_error_response::Details::RetryInfo(
                pb::RetryInfo {
                    retry_after_nanoseconds: 3_000_000_000
                }
            ))
        );
    }

    #[test]
    fn the_largest_offer_len_bounds_every_answer_with_that_offer() {
        let mut rc = offer();
        rc.config = Some(pb::AgentConfigMap {
            config_map: [(
                "big".to_string(),
                pb::AgentConfigFile {
                    body: vec![b'x'; 300],
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
        });
        let bound = Reply::largest_offer_len(&rc);
        let full = Reply::answer(
            vec![1; 16],
            Answer {
                flags: u64::MAX,
                remote_config: Some(rc.clone()),
                new_instance_uid: Some([2; 16]),
                connection_settings: None,
                packages_available: None,
            },
        );
        assert_eq!(prost::Message::encoded_len(&*full), bound);
        let plain = Reply::answer(
            vec![1; 16],
            Answer {
                remote_config: Some(rc),
                ..Default::default()
            },
        );
        assert!(prost::Message::encoded_len(&*plain) < bound);
    }

    #[test]
    fn without_offers_keeps_the_rest() {
        let reply = Reply::answer(
            vec![1; 16],
            Answer {
                flags: FLAG_REPORT_FULL_STATE,
                remote_config: Some(offer()),
                new_instance_uid: None,
                connection_settings: None,
                packages_available: None,
            },
        )
        .without_offers();
        assert!(reply.remote_config.is_none());
        assert_eq!(
            *reply,
            *Reply::answer(
                vec![1; 16],
                Answer {
                    flags: FLAG_REPORT_FULL_STATE,
                    ..Default::default()
                }
            )
        );
    }
}
