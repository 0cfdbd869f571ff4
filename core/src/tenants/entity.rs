//! The registry's tables as sea-orm entities; the schema itself is in [`crate::db::migration`].

/// One row per tenant. Quotas are stored as `i64` (PostgreSQL has no unsigned integers).
pub mod tenant {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub name: String,
        /// `active` or `suspended`.
        pub state: String,
        pub documents_per_second: i64,
        pub bytes_per_second: i64,
        pub max_payload_bytes: i64,
        pub max_watch_streams: i64,
        pub max_top_k: i64,
        /// Added by a later migration; rows from before it got the default, 1,000.
        pub requests_per_second: i64,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A certificate identity bound to a tenant: `kind` is `fingerprint`, `subject` or `san`.
pub mod binding {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenant_certificates")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub kind: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub value: String,
        pub tenant: String,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A revoked certificate: `kind` is `serial` or `fingerprint`.
pub mod revoked {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "revoked_certificates")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub kind: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub value: String,
        pub reason: String,
        pub revoked_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One row per registry change; `detail` is JSON text.
pub mod audit {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "registry_audit")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub at_ms: i64,
        pub actor: String,
        pub action: String,
        pub tenant: Option<String>,
        pub detail: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
