//! `m87 org create|list|delete` and `m87 org members add|remove|list|role`.

use m87_events::api::{CreateOrgRequest, MemberRequest, MemberSummary, OrgSummary, RoleRequest};
use m87_events::{Email, OrgId, Role};

use crate::context::user_client;
use crate::output::{Output, print_json, print_table};

/// `m87 org create`.
pub async fn create(id: OrgId, name: Option<String>, output: Output) -> anyhow::Result<()> {
    let org: OrgSummary = user_client()?
        .post("/v1/orgs", &CreateOrgRequest { id, name })
        .await?;
    match output {
        Output::Json => print_json(&org),
        Output::Table => {
            println!(
                "created organization {} ({}); you are its admin",
                org.id, org.name
            );
            Ok(())
        }
    }
}

/// `m87 org list`.
pub async fn list(output: Output) -> anyhow::Result<()> {
    let orgs: Vec<OrgSummary> = user_client()?.get("/v1/orgs").await?;
    match output {
        Output::Json => print_json(&orgs),
        Output::Table if orgs.is_empty() => {
            println!("no organizations");
            Ok(())
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = orgs
                .iter()
                .map(|o| {
                    vec![
                        o.id.to_string(),
                        o.name.clone(),
                        o.role
                            .map(|r| r.as_str().to_owned())
                            .unwrap_or_else(|| "-".into()),
                        o.members.to_string(),
                    ]
                })
                .collect();
            print_table(&["ID", "NAME", "YOUR ROLE", "MEMBERS"], &rows);
            Ok(())
        }
    }
}

/// `m87 org delete`.
pub async fn delete(id: OrgId) -> anyhow::Result<()> {
    user_client()?.delete(&format!("/v1/orgs/{id}")).await?;
    println!("deleted organization {id}");
    Ok(())
}

/// `m87 org members add`.
pub async fn add(org: OrgId, email: Email, role: Role) -> anyhow::Result<()> {
    user_client()?
        .post_no_content(
            &format!("/v1/orgs/{org}/members"),
            &MemberRequest {
                email: email.clone(),
                role,
            },
        )
        .await?;
    println!("added {email} to {org} as {}", role.as_str());
    Ok(())
}

/// `m87 org members remove`.
pub async fn remove(org: OrgId, email: Email) -> anyhow::Result<()> {
    user_client()?
        .delete(&format!("/v1/orgs/{org}/members/{email}"))
        .await?;
    println!("removed {email} from {org}");
    Ok(())
}

/// `m87 org members role`.
pub async fn role(org: OrgId, email: Email, role: Role) -> anyhow::Result<()> {
    user_client()?
        .put_no_content(
            &format!("/v1/orgs/{org}/members/{email}"),
            &RoleRequest { role },
        )
        .await?;
    println!("{email} is now {} in {org}", role.as_str());
    Ok(())
}

/// `m87 org members list`.
pub async fn members(org: OrgId, output: Output) -> anyhow::Result<()> {
    let members: Vec<MemberSummary> = user_client()?
        .get(&format!("/v1/orgs/{org}/members"))
        .await?;
    match output {
        Output::Json => print_json(&members),
        Output::Table => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| vec![m.email.to_string(), m.role.as_str().to_owned()])
                .collect();
            print_table(&["EMAIL", "ROLE"], &rows);
            Ok(())
        }
    }
}
