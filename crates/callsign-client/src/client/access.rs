//! Workforce access (`/access/entra`, api-version 2025-03-02-preview): the access assignments
//! that let principals of a trusted identity provider (a user, a group, a whole tenant)
//! exchange their own access tokens for communication tokens, and the exchange itself.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use callsign_api as api;
use futures_util::Stream;
use percent_encoding::utf8_percent_encode;
use reqwest::header::HeaderValue;
use reqwest::{Method, Url};

use super::list::{bad_url, follow_pages};
use super::{
    ApiVersion, Auth, Call, CommunicationIdentityClient, JSON, SEGMENT, scope_names, to_json,
};
use crate::{AccessToken, CommunicationTokenScope, CommunicationUserIdentifier, Error};

/// The api-version of the exchange and of the access assignment calls, whatever
/// [`CommunicationIdentityClientBuilder::api_version`](super::CommunicationIdentityClientBuilder::api_version)
/// says: the only one that has them (a preview: the real service may change it).
pub const ACCESS_API_VERSION: &str = VERSION.as_str();

const VERSION: ApiVersion = ApiVersion::V2025_03_02Preview;

/// The collection of access assignments, relative to the endpoint.
const ASSIGNMENTS: &str = "access/entra/assignments";

/// The media type of a JSON merge patch (RFC 7396).
const MERGE_PATCH: &str = "application/merge-patch+json";

/// What kind of principal an access assignment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalType {
    /// One user (`user`): the object id is the user's object id (or subject).
    User,
    /// Every member of a group (`group`): the object id is the group's.
    Group,
    /// Every user of a tenant (`tenant`): the object id is the tenant id.
    Tenant,
    /// A Teams resource account (`teamsResourceAccount`).
    TeamsResourceAccount,
}

impl PrincipalType {
    /// Every type, in a fixed order.
    pub const ALL: [PrincipalType; 4] = [
        PrincipalType::User,
        PrincipalType::Group,
        PrincipalType::Tenant,
        PrincipalType::TeamsResourceAccount,
    ];

    /// The wire name: `user`, `group`, `tenant` or `teamsResourceAccount`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PrincipalType::User => "user",
            PrincipalType::Group => "group",
            PrincipalType::Tenant => "tenant",
            PrincipalType::TeamsResourceAccount => "teamsResourceAccount",
        }
    }
}

impl fmt::Display for PrincipalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A principal type name that is none of [`PrincipalType`]'s wire names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPrincipalType(pub String);

impl fmt::Display for UnknownPrincipalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a principal type (user, group, tenant, teamsResourceAccount)",
            self.0
        )
    }
}

impl std::error::Error for UnknownPrincipalType {}

impl FromStr for PrincipalType {
    type Err = UnknownPrincipalType;

    /// The type with exactly this wire name (names are case-sensitive, as the service's are).
    ///
    /// ```
    /// use callsign_client::PrincipalType;
    ///
    /// assert_eq!("teamsResourceAccount".parse(), Ok(PrincipalType::TeamsResourceAccount));
    /// assert!("User".parse::<PrincipalType>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PrincipalType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownPrincipalType(s.to_owned()))
    }
}

/// The body of a put, and one member of a patch: the principal's tenant, its type and,
/// optionally, the scopes of the tokens its exchanges get (a callsign extension; `None`: the
/// trusted issuer's configured scopes).
///
/// ```
/// use callsign_client::{CommunicationTokenScope, PrincipalType, access_assignment_request};
///
/// let request = access_assignment_request(
///     "72f988bf-86f1-41af-91ab-2d7cd011db47",
///     PrincipalType::Group,
///     Some(&[CommunicationTokenScope::Chat]),
/// );
/// assert_eq!(
///     serde_json::to_string(&request).unwrap(),
///     r#"{"tenantId":"72f988bf-86f1-41af-91ab-2d7cd011db47","principalType":"group","scopes":["chat"]}"#
/// );
/// ```
pub fn access_assignment_request(
    tenant_id: &str,
    principal_type: PrincipalType,
    scopes: Option<&[CommunicationTokenScope]>,
) -> api::EntraAssignmentRequest {
    api::EntraAssignmentRequest {
        tenant_id: Some(tenant_id.to_owned()),
        principal_type: Some(principal_type.as_str().to_owned()),
        scopes: scopes.map(scope_names),
    }
}

/// One page of [`CommunicationIdentityClient::list_access_assignments_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessAssignmentsPage {
    /// The assignments of this page, in object id order.
    pub assignments: Vec<api::EntraAssignment>,
    /// The link to the next page, to pass to the next call; `None` on the last page.
    pub next_link: Option<String>,
}

impl CommunicationIdentityClient {
    /// Exchanges a user's access token from a trusted identity provider (an Entra ID token,
    /// or another OIDC provider's the server trusts) for the user's communication identity and
    /// a communication token (`POST /access/entra/:exchangeAccessToken`, api-version
    /// 2025-03-02-preview). The identity is derived from the user's tenant and object id, so
    /// every exchange of the same user yields the same identity and a new token; the token's
    /// expiry follows the provider token's.
    ///
    /// `bearer` is sent as `Authorization: Bearer …` and is the only credential: the request is
    /// not signed and the access key is not sent. The token is never logged. Retried as the
    /// other calls are (a repeated exchange only issues another token).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] (nothing sent) for an empty token or one that cannot be a
    /// header value; otherwise see [`Error`]: 401 for a token the server does not accept, 403
    /// when no access assignment covers the user.
    pub async fn exchange_access_token(
        &self,
        bearer: &str,
    ) -> Result<(CommunicationUserIdentifier, AccessToken), Error> {
        let call = Call {
            method: Method::POST,
            path: "access/entra/:exchangeAccessToken".to_owned(),
            api_version: VERSION,
            body: Some(b"{}".to_vec()),
            expected: 200,
            also: None,
            auth: Auth::Bearer(bearer_header(bearer)?),
            content_type: JSON,
        };
        let exchanged: api::CreateIdentityResponse = self.call_json(call).await?;
        super::user_and_token(exchanged, 200)
    }

    /// The access assignment of `object_id` (`GET /access/entra/assignments/{objectId}`).
    ///
    /// # Errors
    ///
    /// See [`Error`]: 404 `AssignmentNotFound` when there is none;
    /// [`Error::InvalidArgument`] for an object id that cannot be a path segment (empty, `.`,
    /// `..`).
    pub async fn get_access_assignment(
        &self,
        object_id: &str,
    ) -> Result<api::EntraAssignment, Error> {
        self.call_json(Call {
            method: Method::GET,
            path: assignment_path(object_id)?,
            api_version: VERSION,
            body: None,
            expected: 200,
            also: None,
            auth: Auth::AccessKey,
            content_type: JSON,
        })
        .await
    }

    /// Creates or replaces the access assignment of `object_id`
    /// (`PUT /access/entra/assignments/{objectId}`); see [`access_assignment_request`] for the
    /// fields. Returns the assignment as stored and whether it was created (201) rather than
    /// replaced (200).
    ///
    /// # Errors
    ///
    /// See [`Error`]: 400 `ValidationError` for a tenant id that is not a GUID or an object id
    /// the service refuses; [`Error::InvalidArgument`] as for
    /// [`get_access_assignment`](Self::get_access_assignment).
    pub async fn put_access_assignment(
        &self,
        object_id: &str,
        tenant_id: &str,
        principal_type: PrincipalType,
        scopes: Option<&[CommunicationTokenScope]>,
    ) -> Result<(api::EntraAssignment, bool), Error> {
        let body = access_assignment_request(tenant_id, principal_type, scopes);
        let call = Call {
            method: Method::PUT,
            path: assignment_path(object_id)?,
            api_version: VERSION,
            body: Some(to_json(&body)?),
            expected: 201,
            also: Some(200),
            auth: Auth::AccessKey,
            content_type: JSON,
        };
        let url = self.url(&call)?;
        let (status, assignment) = self.call_json_status_at(&call, url).await?;
        Ok((assignment, status == 201))
    }

    /// Deletes the access assignment of `object_id`
    /// (`DELETE /access/entra/assignments/{objectId}`). Identities already derived from it stay;
    /// its principals can no longer exchange tokens (unless another assignment covers them).
    ///
    /// # Errors
    ///
    /// See [`Error`]: 404 `AssignmentNotFound` when there is none;
    /// [`Error::InvalidArgument`] as for [`get_access_assignment`](Self::get_access_assignment).
    pub async fn delete_access_assignment(&self, object_id: &str) -> Result<(), Error> {
        self.call(Call {
            method: Method::DELETE,
            path: assignment_path(object_id)?,
            api_version: VERSION,
            body: None,
            expected: 204,
            also: None,
            auth: Auth::AccessKey,
            content_type: JSON,
        })
        .await
        .map(drop)
    }

    /// Puts and deletes several access assignments in one request
    /// (`PATCH /access/entra/assignments`, a JSON merge patch): each object id maps to its new
    /// assignment, or to `None` to delete it (an absent one is no error). The service applies
    /// all of it or none. Returns the assignments put, by object id.
    ///
    /// ```no_run
    /// # async fn demo(client: callsign_client::CommunicationIdentityClient) -> Result<(), callsign_client::Error> {
    /// use callsign_client::{EntraAssignmentPatch, PrincipalType, access_assignment_request};
    ///
    /// let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    /// let mut patch = EntraAssignmentPatch::new();
    /// patch.insert(tenant.to_owned(), Some(access_assignment_request(tenant, PrincipalType::Tenant, None)));
    /// patch.insert("auth0|5f7c8ec7c33c6c004bbafe82".to_owned(), None);
    /// let put = client.patch_access_assignments(&patch).await?;
    /// assert!(put.contains_key(tenant));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Error`]: 400 `ValidationError` when a member is invalid (nothing is then changed).
    pub async fn patch_access_assignments(
        &self,
        patch: &api::EntraAssignmentPatch,
    ) -> Result<BTreeMap<String, api::EntraAssignment>, Error> {
        self.call_json(Call {
            method: Method::PATCH,
            path: ASSIGNMENTS.to_owned(),
            api_version: VERSION,
            body: Some(to_json(patch)?),
            expected: 200,
            also: None,
            auth: Auth::AccessKey,
            content_type: MERGE_PATCH,
        })
        .await
    }

    /// One page of the resource's access assignments: the first one (of at most
    /// `max_page_size`, 1 to 1000; the service's default is 100) when `next_link` is `None`,
    /// else the page a previous [`AccessAssignmentsPage::next_link`] names (which carries the
    /// page size; `max_page_size` is then not read).
    ///
    /// # Errors
    ///
    /// See [`Error`]: 400 `ValidationError` for a page size out of range or a link the service
    /// did not hand out; [`Error::UnexpectedResponse`] for a `nextLink` to another server.
    pub async fn list_access_assignments_page(
        &self,
        max_page_size: Option<u32>,
        next_link: Option<&str>,
    ) -> Result<AccessAssignmentsPage, Error> {
        let url = match next_link {
            Some(link) => self.next_page_url(link)?,
            None => self.first_assignments_url(max_page_size)?,
        };
        let call = Call {
            method: Method::GET,
            path: String::new(),
            api_version: VERSION,
            body: None,
            expected: 200,
            also: None,
            auth: Auth::AccessKey,
            content_type: JSON,
        };
        let page: api::EntraAssignmentPage = self.call_json_at(&call, url).await?;
        Ok(AccessAssignmentsPage {
            assignments: page.value,
            next_link: page.next_link,
        })
    }

    /// Every access assignment of the resource, in object id order, fetched a page (of at most
    /// `max_page_size`) at a time as the stream is read, following `nextLink`. The stream ends
    /// after the first error, and with an error if the pages do not move forward.
    ///
    /// ```no_run
    /// # async fn demo(client: callsign_client::CommunicationIdentityClient) -> Result<(), callsign_client::Error> {
    /// use futures_util::TryStreamExt as _;
    ///
    /// let mut assignments = std::pin::pin!(client.list_access_assignments(None));
    /// while let Some(a) = assignments.try_next().await? {
    ///     println!("{} {} {}", a.object_id, a.principal_type, a.tenant_id);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn list_access_assignments(
        &self,
        max_page_size: Option<u32>,
    ) -> impl Stream<Item = Result<api::EntraAssignment, Error>> + Send + 'static {
        let client = self.clone();
        follow_pages(
            move |link| {
                let client = client.clone();
                async move {
                    let page = client
                        .list_access_assignments_page(max_page_size, link.as_deref())
                        .await?;
                    Ok((page.assignments, page.next_link))
                }
            },
            |a| a.object_id.as_str(),
            "assignments",
        )
    }

    fn first_assignments_url(&self, max_page_size: Option<u32>) -> Result<Url, Error> {
        let mut url = self.endpoint().join(ASSIGNMENTS).map_err(|e| bad_url(&e))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("api-version", VERSION.as_str());
            if let Some(size) = max_page_size {
                query.append_pair(
                    api::EntraAssignmentPage::MAX_PAGE_SIZE_PARAMETER,
                    &size.to_string(),
                );
            }
        }
        Ok(url)
    }
}

/// `access/entra/assignments/<object id, percent-encoded>`. An object id that would not stay
/// one path segment (empty, or a dot segment the URL parser would resolve into another path)
/// is refused before anything is signed or sent.
fn assignment_path(object_id: &str) -> Result<String, Error> {
    if matches!(object_id, "" | "." | "..") {
        return Err(Error::InvalidArgument(format!(
            "the object id {object_id:?} cannot be a path segment"
        )));
    }
    Ok(format!(
        "{ASSIGNMENTS}/{}",
        utf8_percent_encode(object_id, SEGMENT)
    ))
}

/// `Bearer <token>`, marked sensitive. Surrounding white space (a token file's final newline)
/// is dropped; the error never quotes the token.
fn bearer_header(bearer: &str) -> Result<HeaderValue, Error> {
    let bearer = bearer.trim();
    if bearer.is_empty() {
        return Err(Error::InvalidArgument(
            "the bearer token is empty".to_owned(),
        ));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {bearer}")).map_err(|_| {
        Error::InvalidArgument(
            "the bearer token holds characters an HTTP header cannot carry".to_owned(),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_one_percent_encoded_path_segment() {
        let path = |id: &str| assignment_path(id).expect("a path");
        assert_eq!(
            path("auth0|5f7c8ec7c33c6c004bbafe82"),
            "access/entra/assignments/auth0%7C5f7c8ec7c33c6c004bbafe82"
        );
        assert_eq!(
            path("B27B64B9-39d2-44a3-869d-67700b74e805"),
            "access/entra/assignments/B27B64B9-39d2-44a3-869d-67700b74e805"
        );
        assert_eq!(
            path("a/b?c d#e%f"),
            "access/entra/assignments/a%2Fb%3Fc%20d%23e%25f"
        );
        assert_eq!(path("..."), "access/entra/assignments/...");
        assert_eq!(path("%2e%2e"), "access/entra/assignments/%252e%252e");
        for bad in ["", ".", ".."] {
            assert!(
                matches!(assignment_path(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn principal_types_round_trip_through_their_case_sensitive_wire_names() {
        for t in PrincipalType::ALL {
            assert_eq!(t.as_str().parse(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(
            "User".parse::<PrincipalType>(),
            Err(UnknownPrincipalType("User".to_owned()))
        );
        assert!(
            UnknownPrincipalType("resourceAccount".to_owned())
                .to_string()
                .contains("teamsResourceAccount")
        );
    }

    #[test]
    fn the_bearer_header_is_sensitive_trimmed_and_never_quoted_in_errors() {
        let value = bearer_header("  eyJ.a.b\n").expect("a header");
        assert_eq!(value.to_str().ok(), Some("Bearer eyJ.a.b"));
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("eyJ"));
        assert!(matches!(
            bearer_header(" \n"),
            Err(Error::InvalidArgument(_))
        ));
        let e = bearer_header("secret\u{7f}token").expect_err("a control character");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn a_put_without_scopes_sends_no_scopes_field() {
        let body = access_assignment_request(
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            PrincipalType::User,
            None,
        );
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"tenantId":"72f988bf-86f1-41af-91ab-2d7cd011db47","principalType":"user"}"#
        );
    }
}
