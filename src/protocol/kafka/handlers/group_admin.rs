//! The consumer-group admin views: ListGroups, DescribeGroups and DeleteGroups (split from
//! `groups`, which serves the members' own requests). With ACLs on, a client sees and deletes
//! only the groups it may DESCRIBE or DELETE (or every group with DESCRIBE on the cluster).

use std::sync::Arc;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
};

use super::groups::{code_of, s, GROUP_DENIED};
use super::{decode, respond, Outcome};
use crate::broker::{GroupState, GroupType};
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::KafkaContext;

pub fn list_groups(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: ListGroupsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let filter: Vec<GroupState> = request
        .states_filter
        .iter()
        .filter_map(|st| GroupState::parse(st.as_str()))
        .collect();
    // Unknown state names in the filter match nothing, as in Kafka.
    let mut groups = if !request.states_filter.is_empty() && filter.is_empty() {
        Vec::new()
    } else {
        ctx.core.groups().list_groups(&filter)
    };
    // v5 (KIP-848): filter by group type, "classic" or "consumer".
    if !request.types_filter.is_empty() {
        let types: Vec<GroupType> = request
            .types_filter
            .iter()
            .filter_map(|t| GroupType::parse(t.as_str()))
            .collect();
        groups.retain(|g| types.contains(&g.group_type));
    }
    // DESCRIBE on the cluster lists every group; otherwise the groups the client may DESCRIBE.
    let everything = ctx.allowed_on_cluster(conn, operation::DESCRIBE);
    let groups: Vec<_> = groups
        .into_iter()
        .filter(|g| {
            everything || ctx.allowed(conn, operation::DESCRIBE, resource::GROUP, &g.group_id)
        })
        .collect();
    let body = ListGroupsResponse::default().with_groups(
        groups
            .into_iter()
            .map(|g| {
                let mut listed = ListedGroup::default()
                    .with_group_id(GroupId(s(g.group_id)))
                    .with_protocol_type(s(g.protocol_type));
                if v >= 4 {
                    listed = listed.with_group_state(s(g.state.as_str()));
                }
                if v >= 5 {
                    listed = listed.with_group_type(s(g.group_type.as_str()));
                }
                listed
            })
            .collect(),
    );
    respond(ApiKey::ListGroups, v, req.correlation_id, &body)
}

pub fn describe_groups(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: DescribeGroupsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let groups = request
        .groups
        .iter()
        .map(|id| {
            if !ctx.allowed(conn, operation::DESCRIBE, resource::GROUP, id.as_str()) {
                return DescribedGroup::default()
                    .with_group_id(id.clone())
                    .with_error_code(GROUP_DENIED);
            }
            let d = ctx.core.groups().describe_group(id.as_str());
            DescribedGroup::default()
                .with_group_id(id.clone())
                .with_group_state(s(d.state.as_str()))
                .with_protocol_type(s(d.protocol_type))
                .with_protocol_data(s(d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            let mut member = DescribedGroupMember::default()
                                .with_member_id(s(m.member_id))
                                .with_client_id(s(m.client_id))
                                .with_client_host(s(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment);
                            if v >= 4 {
                                member = member.with_group_instance_id(m.instance_id.map(s));
                            }
                            member
                        })
                        .collect(),
                )
        })
        .collect();
    let body = DescribeGroupsResponse::default().with_groups(groups);
    respond(ApiKey::DescribeGroups, v, req.correlation_id, &body)
}

pub fn delete_groups(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: DeleteGroupsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let (ids, denied): (Vec<String>, Vec<String>) = request
        .groups_names
        .iter()
        .map(|g| g.to_string())
        .partition(|id| ctx.allowed(conn, operation::DELETE, resource::GROUP, id));
    let results = ctx.core.groups().delete_groups(&ids);
    let result = |id: String, code: i16| {
        kafka_protocol::messages::delete_groups_response::DeletableGroupResult::default()
            .with_group_id(GroupId(s(id)))
            .with_error_code(code)
    };
    let body = DeleteGroupsResponse::default().with_results(
        results
            .into_iter()
            .map(|(id, r)| result(id, code_of(&r)))
            .chain(denied.into_iter().map(|id| result(id, GROUP_DENIED)))
            .collect(),
    );
    respond(
        ApiKey::DeleteGroups,
        req.api_version,
        req.correlation_id,
        &body,
    )
}
