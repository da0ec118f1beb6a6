//! Who a bearer token (or a console session signed in with one) acts as: an admin, who sees
//! every tenant, or one tenant, who sees its own runs only. Tenants are a security boundary:
//! every route and page scopes what it reads and does by this.

/// Who a token acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The service's operator (`server.token`, or a `[[server.tokens]]` entry with
    /// `admin = true`): every tenant.
    Admin,
    /// One tenant (a `[[server.tokens]]` entry with `tenant`): its own runs only.
    Tenant(String),
}

impl Identity {
    /// Whether this identity may see and steer the runs of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Identity::Admin => true,
            Identity::Tenant(own) => own == tenant,
        }
    }

    /// The only tenant this identity sees, if it is bound to one.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Identity::Admin => None,
            Identity::Tenant(own) => Some(own),
        }
    }

    /// Whether it may halt or lift whole tenants, and set their ceilings.
    pub fn is_admin(&self) -> bool {
        matches!(self, Identity::Admin)
    }

    /// For the console's page header.
    pub fn label(&self) -> String {
        match self {
            Identity::Admin => "admin".into(),
            Identity::Tenant(own) => format!("tenant {own}"),
        }
    }
}
