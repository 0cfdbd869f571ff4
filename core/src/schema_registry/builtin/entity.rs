//! The built-in registry's tables as sea-orm entities; the schema itself is in
//! [`crate::db::migration`].

/// One row per distinct schema (text and references); its id is the global schema id.
pub mod schema {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "schema_registry_schemas")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        /// SHA-256 of the parsed schema written back as JSON and of its references: the same
        /// schema spelled differently (whitespace, key order) has the same fingerprint.
        #[sea_orm(unique)]
        pub fingerprint: String,
        /// The schema as first registered.
        pub schema: String,
        /// JSON array of `SchemaReference`s (`[]` for none).
        pub references: String,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One row per version of a subject; soft-deleted versions stay until deleted permanently.
pub mod version {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "schema_registry_versions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub subject: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub version: i32,
        pub schema_id: i32,
        pub deleted: bool,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Compatibility levels set through the API: one row per subject that has its own, and the
/// global level under the empty subject.
pub mod config {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "schema_registry_config")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub subject: String,
        /// A [`crate::schema_registry::CompatibilityLevel`] as Confluent spells it.
        pub compatibility: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
