//! Listing the users of a resource (callsign's `GET /identities` extension), page by page or as
//! a stream that follows `nextLink`.

use callsign_api as api;
use callsign_api::list::{LAST_TOKEN_ISSUED_BEFORE_PARAMETER, MAX_PAGE_SIZE_PARAMETER};
use futures_util::{Stream, TryStreamExt as _, stream};
use reqwest::{Method, Url};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{
    Auth, Call, CommunicationIdentityClient, CommunicationUserDetails, JSON, user_details,
};
use crate::Error;

/// Which users [`CommunicationIdentityClient::list_users`] lists, and how many per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListUsersOptions {
    /// Only users whose custom id starts with this.
    pub custom_id_prefix: Option<String>,
    /// Only users whose last token was issued before this instant, or that never had one.
    pub last_token_issued_before: Option<OffsetDateTime>,
    /// Most users per page (1 to 1000; the service's default is 100).
    pub max_page_size: Option<u32>,
}

/// One page of [`CommunicationIdentityClient::list_users_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersPage {
    /// The users of this page, in id order.
    pub users: Vec<CommunicationUserDetails>,
    /// The link to the next page, to pass to the next call; `None` on the last page.
    pub next_link: Option<String>,
}

impl CommunicationIdentityClient {
    /// One page of the resource's users: the first one for `options` when `next_link` is
    /// `None`, else the page a previous [`UsersPage::next_link`] names (which carries the
    /// filters; `options` is then not read). Uses the custom-id api-version, as
    /// [`get_user`](Self::get_user) does.
    ///
    /// # Errors
    ///
    /// See [`Error`]: 400 `ValidationError` for a page size out of range or a link the service
    /// did not hand out; [`Error::UnexpectedResponse`] for a `nextLink` to another server.
    pub async fn list_users_page(
        &self,
        options: &ListUsersOptions,
        next_link: Option<&str>,
    ) -> Result<UsersPage, Error> {
        let url = match next_link {
            Some(link) => self.next_page_url(link)?,
            None => self.first_page_url(options)?,
        };
        let call = Call {
            method: Method::GET,
            path: String::new(),
            api_version: self.custom_id_version(),
            body: None,
            expected: 200,
            also: None,
            auth: Auth::AccessKey,
            content_type: JSON,
        };
        let page: api::IdentityPage = self.call_json_at(&call, url).await?;
        let users = page
            .value
            .into_iter()
            .map(|identity| user_details(identity, 200))
            .collect::<Result<_, _>>()?;
        Ok(UsersPage {
            users,
            next_link: page.next_link,
        })
    }

    /// Every user of the resource that passes `options`, in id order, fetched a page at a time
    /// as the stream is read (following `nextLink`). A user that exists throughout the listing
    /// is listed exactly once, whatever is created or deleted meanwhile. The stream ends after
    /// the first error.
    ///
    /// ```no_run
    /// # async fn demo(client: callsign_client::CommunicationIdentityClient) -> Result<(), callsign_client::Error> {
    /// use futures_util::TryStreamExt as _;
    /// use callsign_client::ListUsersOptions;
    ///
    /// let options = ListUsersOptions {
    ///     custom_id_prefix: Some("team-a/".into()),
    ///     ..ListUsersOptions::default()
    /// };
    /// let mut users = std::pin::pin!(client.list_users(options));
    /// while let Some(user) = users.try_next().await? {
    ///     println!("{} {:?}", user.user, user.custom_id);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn list_users(
        &self,
        options: ListUsersOptions,
    ) -> impl Stream<Item = Result<CommunicationUserDetails, Error>> + Send + 'static {
        let client = self.clone();
        follow_pages(
            move |link| {
                let (client, options) = (client.clone(), options.clone());
                async move {
                    let page = client.list_users_page(&options, link.as_deref()).await?;
                    Ok((page.users, page.next_link))
                }
            },
            |u| u.user.raw_id(),
            "identities",
        )
    }

    fn first_page_url(&self, options: &ListUsersOptions) -> Result<Url, Error> {
        let version = self.custom_id_version();
        let mut url = self
            .endpoint()
            .join("identities")
            .map_err(|e| bad_url(&e))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("api-version", version.as_str());
            if let Some(size) = options.max_page_size {
                query.append_pair(MAX_PAGE_SIZE_PARAMETER, &size.to_string());
            }
            if let (Some(prefix), Some(field)) =
                (&options.custom_id_prefix, version.custom_id_field())
            {
                query.append_pair(field.prefix_parameter(), prefix);
            }
            if let Some(before) = options.last_token_issued_before {
                let before = before
                    .format(&Rfc3339)
                    .map_err(|e| Error::Configuration(format!("cannot format the time: {e}")))?;
                query.append_pair(LAST_TOKEN_ISSUED_BEFORE_PARAMETER, &before);
            }
        }
        Ok(url)
    }

    /// A `nextLink`, resolved against the endpoint; only the endpoint's own origin is followed,
    /// so a request signed with the access key never goes elsewhere.
    pub(super) fn next_page_url(&self, link: &str) -> Result<Url, Error> {
        let endpoint = self.endpoint();
        let url = endpoint.join(link).map_err(|e| bad_url(&e))?;
        if url.origin() != endpoint.origin() {
            return Err(Error::UnexpectedResponse {
                status: 200,
                detail: "the nextLink points to another server".to_owned(),
            });
        }
        Ok(url)
    }
}

pub(super) fn bad_url(e: &dyn std::fmt::Display) -> Error {
    Error::Configuration(format!("cannot build the request URL: {e}"))
}

/// Every item of a paged listing: `fetch` gets the page at a link (`None`: the first) and
/// answers its items and the next link; each page is checked to move forward
/// ([`check_progress`], by the items' `id`s) before its items are yielded.
pub(super) fn follow_pages<T, F, Fut>(
    fetch: F,
    id: fn(&T) -> &str,
    what: &'static str,
) -> impl Stream<Item = Result<T, Error>> + Send + 'static
where
    T: Send + 'static,
    F: Fn(Option<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), Error>> + Send + 'static,
{
    /// Where the listing is: before the first page, at a link (with the last id seen), or
    /// done.
    enum Next {
        First,
        Link(String, Option<String>),
        Done,
    }
    stream::try_unfold((Next::First, fetch), move |(next, fetch)| async move {
        let (link, last_id) = match next {
            Next::Done => return Ok(None),
            Next::First => (None, None),
            Next::Link(link, last_id) => (Some(link), last_id),
        };
        let (items, next_link) = fetch(link.clone()).await?;
        let last_id = check_progress(
            link.as_deref(),
            next_link.as_deref(),
            items.iter().map(id),
            last_id,
            what,
        )?;
        let next = next_link.map_or(Next::Done, |l| Next::Link(l, last_id));
        Ok(Some((
            stream::iter(items.into_iter().map(Ok)),
            (next, fetch),
        )))
    })
    .try_flatten()
}

/// Pages come in id order: a page that repeats its own link (`next_link` equal to `link`, the
/// one it was fetched from) or whose `ids` do not move past the last id seen would make the
/// listing go round for ever, so it ends it with an error instead. Returns the last id seen.
pub(super) fn check_progress<'a>(
    link: Option<&str>,
    next_link: Option<&str>,
    ids: impl IntoIterator<Item = &'a str>,
    mut last_id: Option<String>,
    what: &str,
) -> Result<Option<String>, Error> {
    let stuck = |detail: &str| Error::UnexpectedResponse {
        status: 200,
        detail: format!("the listing does not move forward: {detail}"),
    };
    if link.is_some() && next_link == link {
        return Err(stuck("a page names itself as the next one"));
    }
    for id in ids {
        if last_id.as_deref().is_some_and(|last| id <= last) {
            return Err(stuck(&format!("{what} out of order or repeated")));
        }
        last_id = Some(id.to_owned());
    }
    Ok(last_id)
}
