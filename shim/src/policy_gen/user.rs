//! The user a container's process runs as, resolved as containerd's CRI does it (containerd
//! 1.6: `generateUserString`, `oci.WithUser`, `WithAdditionalGIDs`, `WithSupplementalGroups`).
//!
//! The user string is the securityContext's `runAsUser[:runAsGroup]`, else the image's USER.
//! A name (user or group), or a uid without a group (its group comes from /etc/passwd), needs
//! the image's /etc/passwd and /etc/group; a numeric `uid:gid` or no user at all (root) does
//! not, and then the image's supplementary groups are not known: the policy requires the
//! primary and the pod's groups and allows others (see the rules).

use std::collections::BTreeSet;

use super::images::Accounts;

/// The process user of a container as the policy pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
    /// Always holds `gid` (containerd puts the primary group there).
    pub additional_gids: BTreeSet<u32>,
    /// Whether `additional_gids` is the whole set (the image's /etc/group was read).
    pub exact: bool,
}

/// CRI's user string: `runAsUser[:runAsGroup]` (numbers), else the image's USER.
pub fn user_string(
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    image_user: &str,
) -> Result<String, String> {
    match (run_as_user, run_as_group) {
        (Some(u), Some(g)) => Ok(format!("{u}:{g}")),
        (Some(u), None) => Ok(u.to_string()),
        (None, Some(g)) => Err(format!(
            "runAsGroup {g} without runAsUser: containerd refuses a group without a user"
        )),
        (None, None) => Ok(image_user.to_string()),
    }
}

fn numeric(s: &str) -> Option<u32> {
    s.parse().ok()
}

/// Whether resolving `user` needs the image's /etc/passwd and /etc/group.
pub fn needs_accounts(user: &str) -> bool {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if user.is_empty() {
        return false;
    }
    match (numeric(u), g) {
        (None, _) => true,
        (Some(_), Some(g)) => numeric(g).is_none(),
        // A uid alone: its primary group is /etc/passwd's (root's is taken to be 0).
        (Some(uid), None) => uid != 0,
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: numeric(f[2])?,
                gid: numeric(f[3])?,
            })
        })
        .collect()
}

fn groups(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: numeric(f[2])?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user` (a CRI user string) with the image's accounts (read when
/// [`needs_accounts`]), adding the pod's supplementary groups.
pub fn resolve(
    user: &str,
    accounts: Option<&Accounts>,
    supplemental: &[u32],
) -> Result<UserSpec, String> {
    let pw = accounts
        .and_then(|a| a.passwd.as_deref())
        .map(passwd)
        .unwrap_or_default();
    let gr = accounts
        .and_then(|a| a.group.as_deref())
        .map(groups)
        .unwrap_or_default();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, mut gid, username) = if user.is_empty() {
        (0, 0, pw.iter().find(|e| e.uid == 0).map(|e| e.name.clone()))
    } else {
        match numeric(u) {
            Some(uid) => {
                let e = pw.iter().find(|e| e.uid == uid);
                // containerd: a uid without a passwd entry gets group 0.
                (uid, e.map_or(0, |e| e.gid), e.map(|e| e.name.clone()))
            }
            None => {
                let e = pw
                    .iter()
                    .find(|e| e.name == u)
                    .ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?;
                (e.uid, e.gid, Some(u.to_string()))
            }
        }
    };
    if let Some(g) = g {
        gid = match numeric(g) {
            Some(n) => n,
            None => {
                gr.iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?
                    .gid
            }
        };
    }
    let mut additional: BTreeSet<u32> = BTreeSet::from([gid]);
    if let Some(name) = &username {
        // The groups that list the user, not its own-named group.
        additional.extend(
            gr.iter()
                .filter(|e| &e.name != name && e.members.iter().any(|m| m == name))
                .map(|e| e.gid),
        );
    }
    additional.extend(supplemental.iter().copied());
    Ok(UserSpec {
        uid,
        gid,
        additional_gids: additional,
        exact: accounts.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc() -> Accounts {
        Accounts {
            passwd: Some(
                "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101::/:/sbin/nologin\nbad line\n"
                    .into(),
            ),
            group: Some(
                "root:x:0:\nwheel:x:10:root\nnginx:x:101:nginx\nweb:x:200:nginx,other\n".into(),
            ),
        }
    }

    #[test]
    fn the_user_string_is_cris() {
        assert_eq!(
            user_string(Some(1000), Some(3000), "x").unwrap(),
            "1000:3000"
        );
        assert_eq!(user_string(Some(1000), None, "x").unwrap(), "1000");
        assert_eq!(user_string(None, None, "nginx").unwrap(), "nginx");
        assert!(user_string(None, Some(5), "x").is_err());
    }

    #[test]
    fn which_users_need_the_images_accounts() {
        for (u, need) in [
            ("", false),
            ("0", false),
            ("65535:65535", false),
            ("1000", true),
            ("nginx", true),
            ("1000:web", true),
            ("nginx:10", true),
        ] {
            assert_eq!(needs_accounts(u), need, "{u}");
        }
    }

    #[test]
    fn resolution_as_containerd_does_it() {
        let a = acc();
        let r = resolve("", Some(&a), &[]).unwrap();
        assert_eq!((r.uid, r.gid), (0, 0));
        assert_eq!(r.additional_gids, BTreeSet::from([0, 10]));
        let r = resolve("nginx", Some(&a), &[3000]).unwrap();
        assert_eq!((r.uid, r.gid), (101, 101));
        assert_eq!(r.additional_gids, BTreeSet::from([101, 200, 3000]));
        assert!(r.exact);
        let r = resolve("2000", Some(&a), &[]).unwrap();
        assert_eq!((r.uid, r.gid), (2000, 0));
        assert_eq!(r.additional_gids, BTreeSet::from([0]));
        let r = resolve("101:web", Some(&a), &[]).unwrap();
        assert_eq!((r.uid, r.gid), (101, 200));
        let r = resolve("65535:65535", None, &[]).unwrap();
        assert_eq!((r.uid, r.gid, r.exact), (65535, 65535, false));
        assert_eq!(
            resolve("nobody", Some(&a), &[]).unwrap_err(),
            "user \"nobody\" is not in the image's /etc/passwd"
        );
    }
}
