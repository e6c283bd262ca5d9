//! Which events may take someone's access to a device away. Relays follow the event feed and,
//! on such an event, check every open session again.

use m87_events::DomainEvent;

/// Whether an event may take someone's access to a device away.
pub fn access_may_shrink(event: &DomainEvent) -> bool {
    matches!(
        event,
        DomainEvent::AccessRevoked(_)
            | DomainEvent::DeviceRemoved(_)
            | DomainEvent::MemberRemoved(_)
            | DomainEvent::MemberRoleChanged(_)
            | DomainEvent::OrgDeleted(_)
            | DomainEvent::ApiKeyRevoked(_)
    )
}
