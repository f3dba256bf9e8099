//! Lifecycle models: ordered stages, their categories and roles, and which moves are allowed.

use clm_platform::FieldViolation;

/// Default inactivity after which a customer becomes dormant: 90 days, in µs.
pub const DEFAULT_DORMANCY_MICROS: i64 = 90 * 24 * 3600 * 1_000_000;
/// Most stages in one model.
pub const MAX_STAGES: usize = 32;

/// A stage key: `[a-z][a-z0-9_]{0,31}`. Valid by construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageKey(String);

impl StageKey {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let mut b = raw.bytes();
        let ok = raw.len() <= 32
            && b.next().is_some_and(|c| c.is_ascii_lowercase())
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldViolation::new(field, "stage keys match [a-z][a-z0-9_]{0,31}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Prospect,
    Customer,
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Normal,
    Dormant,
    Churned,
    Reactivated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub key: StageKey,
    pub display_name: String,
    pub category: Category,
    pub role: Role,
    /// Inactivity (µs) after which a contact in this stage becomes dormant; `None` = the
    /// model default for customer stages, never for others.
    pub dormancy_micros: Option<i64>,
}

/// A permitted move; `from: None` means from any stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub from: Option<StageKey>,
    pub to: StageKey,
}

/// A valid model: stages in lifecycle order and the allowed moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    stages: Vec<Stage>,
    allowed: Vec<Allowed>,
}

/// The stages the built-in rules aim at, derived from the model's order and categories, so
/// the rules work for any model (a SaaS model's "onboarding" plays conversion's part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Milestones {
    /// First stage (awareness).
    pub entry: StageKey,
    /// First prospect stage after the entry (acquisition / lead), else the entry.
    pub lead: StageKey,
    /// First customer stage (conversion).
    pub conversion: StageKey,
    /// Second customer stage (retention), else conversion.
    pub retention: StageKey,
    /// Last customer stage (loyalty / advocacy).
    pub loyalty: StageKey,
    pub dormant: Option<StageKey>,
    pub churned: Option<StageKey>,
    pub reactivated: Option<StageKey>,
}

fn stage(key: &str, name: &str, category: Category, role: Role) -> Stage {
    Stage { key: StageKey(key.into()), display_name: name.into(), category, role, dormancy_micros: None }
}

impl Model {
    /// The model every tenant starts with.
    pub fn default_model() -> Model {
        Model {
            stages: vec![
                stage("awareness", "Awareness", Category::Prospect, Role::Normal),
                stage("acquisition", "Acquisition", Category::Prospect, Role::Normal),
                stage("conversion", "Conversion", Category::Customer, Role::Normal),
                stage("retention", "Retention", Category::Customer, Role::Normal),
                stage("loyalty", "Loyalty", Category::Customer, Role::Normal),
                stage("dormant", "Dormant", Category::Lost, Role::Dormant),
                stage("churned", "Churned", Category::Lost, Role::Churned),
            ],
            allowed: Vec::new(),
        }
    }

    /// Check stages and moves. Violations name `stages[i].key` etc.
    pub fn new(stages: Vec<Stage>, allowed: Vec<Allowed>) -> Result<Model, Vec<FieldViolation>> {
        let mut v = Vec::new();
        if stages.is_empty() || stages.len() > MAX_STAGES {
            v.push(FieldViolation::new("stages", format!("1 to {MAX_STAGES} stages")));
        }
        for (i, s) in stages.iter().enumerate() {
            if stages[..i].iter().any(|o| o.key == s.key) {
                v.push(FieldViolation::new(format!("stages[{i}].key"), "appears twice"));
            }
            if s.display_name.trim().is_empty() || s.display_name.chars().count() > 64 {
                v.push(FieldViolation::new(format!("stages[{i}].display_name"), "1 to 64 characters"));
            }
            if s.dormancy_micros.is_some_and(|d| d <= 0) {
                v.push(FieldViolation::new(format!("stages[{i}].dormancy_threshold"), "must be positive"));
            }
            let lost_role = matches!(s.role, Role::Dormant | Role::Churned);
            if lost_role != (s.category == Category::Lost) {
                v.push(FieldViolation::new(
                    format!("stages[{i}].role"),
                    "dormant and churned stages, and only they, have category LOST",
                ));
            }
        }
        for role in [Role::Dormant, Role::Churned, Role::Reactivated] {
            if stages.iter().filter(|s| s.role == role).count() > 1 {
                v.push(FieldViolation::new("stages", format!("at most one stage with role {role:?}")));
            }
        }
        if !stages.iter().any(|s| s.category == Category::Customer) {
            v.push(FieldViolation::new("stages", "needs at least one CUSTOMER stage"));
        }
        if stages.first().is_some_and(|s| s.category != Category::Prospect) {
            v.push(FieldViolation::new("stages[0].category", "the first stage must be a PROSPECT stage"));
        }
        for (i, a) in allowed.iter().enumerate() {
            for (what, key) in [("from_stage", a.from.as_ref()), ("to_stage", Some(&a.to))] {
                if let Some(k) = key
                    && !stages.iter().any(|s| &s.key == k)
                {
                    v.push(FieldViolation::new(format!("allowed_transitions[{i}].{what}"), "no such stage"));
                }
            }
        }
        if v.is_empty() { Ok(Model { stages, allowed }) } else { Err(v) }
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn allowed(&self) -> &[Allowed] {
        &self.allowed
    }

    pub fn stage(&self, key: &StageKey) -> Option<&Stage> {
        self.stages.iter().find(|s| &s.key == key)
    }

    fn index(&self, key: &StageKey) -> Option<usize> {
        self.stages.iter().position(|s| &s.key == key)
    }

    /// Whether `to` comes after `from` in lifecycle order.
    pub fn is_later(&self, from: &StageKey, to: &StageKey) -> bool {
        matches!((self.index(from), self.index(to)), (Some(a), Some(b)) if b > a)
    }

    /// May a contact move `from` → `to`? Default policy (no explicit moves): any stage on
    /// entry, forward to any later stage, back to any earlier one, and anywhere out of a lost
    /// stage (a return). Explicit moves replace the policy (a `None` from is a wildcard).
    pub fn can_move(&self, from: Option<&StageKey>, to: &StageKey) -> bool {
        if self.stage(to).is_none() || from == Some(to) {
            return false;
        }
        if self.allowed.is_empty() {
            return true;
        }
        self.allowed.iter().any(|a| &a.to == to && (a.from.is_none() || a.from.as_ref() == from))
    }

    pub fn milestones(&self) -> Milestones {
        let by_cat = |c: Category| self.stages.iter().filter(move |s| s.category == c && s.role == Role::Normal);
        let entry = self.stages[0].key.clone();
        let lead = by_cat(Category::Prospect).nth(1).map_or_else(|| entry.clone(), |s| s.key.clone());
        let customers: Vec<&Stage> = by_cat(Category::Customer).collect();
        let conversion = customers.first().map_or_else(|| entry.clone(), |s| s.key.clone());
        let retention = customers.get(1).map_or_else(|| conversion.clone(), |s| s.key.clone());
        let loyalty = customers.last().map_or_else(|| conversion.clone(), |s| s.key.clone());
        let role = |r: Role| self.stages.iter().find(|s| s.role == r).map(|s| s.key.clone());
        Milestones {
            entry,
            lead,
            conversion,
            retention,
            loyalty,
            dormant: role(Role::Dormant),
            churned: role(Role::Churned),
            reactivated: role(Role::Reactivated),
        }
    }

    /// Inactivity threshold of a stage (µs), if contacts there can become dormant.
    pub fn dormancy_of(&self, key: &StageKey) -> Option<i64> {
        let s = self.stage(key)?;
        match (s.dormancy_micros, s.category) {
            (Some(d), _) => Some(d),
            (None, Category::Customer) => Some(DEFAULT_DORMANCY_MICROS),
            _ => None,
        }
    }

    /// Stages of `self` that `next` no longer has (a model in use cannot drop a stage that
    /// contacts are in).
    pub fn removed_in(&self, next: &Model) -> Vec<StageKey> {
        self.stages.iter().filter(|s| next.stage(&s.key).is_none()).map(|s| s.key.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> StageKey {
        StageKey::parse("k", s).unwrap()
    }

    #[test]
    fn default_model_milestones_and_moves() {
        let m = Model::default_model();
        let ms = m.milestones();
        assert_eq!(
            (ms.entry.as_str(), ms.lead.as_str(), ms.conversion.as_str(), ms.retention.as_str(), ms.loyalty.as_str()),
            ("awareness", "acquisition", "conversion", "retention", "loyalty")
        );
        assert_eq!(ms.dormant, Some(key("dormant")));
        assert!(m.can_move(None, &key("awareness")));
        assert!(m.can_move(Some(&key("retention")), &key("acquisition")), "back to an earlier stage");
        assert!(m.can_move(Some(&key("dormant")), &key("retention")), "a return");
        assert!(!m.can_move(Some(&key("retention")), &key("retention")));
        assert!(!m.can_move(Some(&key("retention")), &key("nowhere")));
        assert_eq!(m.dormancy_of(&key("retention")), Some(DEFAULT_DORMANCY_MICROS));
        assert_eq!(m.dormancy_of(&key("awareness")), None);
    }

    #[test]
    fn saas_model_maps_onto_the_rules() {
        let s = |k: &str, c| stage(k, k, c, Role::Normal);
        let m = Model::new(
            vec![
                s("awareness", Category::Prospect),
                s("acquisition", Category::Prospect),
                s("onboarding", Category::Customer),
                s("engagement", Category::Customer),
                s("retention", Category::Customer),
                s("advocacy", Category::Customer),
                stage("reactivation", "Reactivation", Category::Customer, Role::Reactivated),
            ],
            vec![],
        )
        .unwrap();
        let ms = m.milestones();
        assert_eq!(
            (ms.conversion.as_str(), ms.retention.as_str(), ms.loyalty.as_str()),
            ("onboarding", "engagement", "advocacy")
        );
        assert_eq!(ms.reactivated, Some(key("reactivation")));
        assert_eq!(ms.dormant, None);
    }

    #[test]
    fn invalid_models_name_the_field() {
        let fields =
            |r: Result<Model, Vec<FieldViolation>>| r.unwrap_err().into_iter().map(|v| v.field).collect::<Vec<_>>();
        assert!(fields(Model::new(vec![], vec![])).contains(&"stages".to_string()));
        let dup =
            vec![stage("a", "A", Category::Prospect, Role::Normal), stage("a", "A", Category::Customer, Role::Normal)];
        assert_eq!(fields(Model::new(dup, vec![])), vec!["stages[1].key"]);
        let lost_without_role = vec![
            stage("a", "A", Category::Prospect, Role::Normal),
            stage("b", "B", Category::Customer, Role::Normal),
            stage("c", "C", Category::Lost, Role::Normal),
        ];
        assert_eq!(fields(Model::new(lost_without_role, vec![])), vec!["stages[2].role"]);
        let ok =
            vec![stage("a", "A", Category::Prospect, Role::Normal), stage("b", "B", Category::Customer, Role::Normal)];
        let bad_move = vec![Allowed { from: Some(key("a")), to: key("zz") }];
        assert_eq!(fields(Model::new(ok, bad_move)), vec!["allowed_transitions[0].to_stage"]);
        assert!(
            StageKey::parse("k", "Upper").is_err()
                && StageKey::parse("k", "1a").is_err()
                && StageKey::parse("k", "").is_err()
        );
    }

    #[test]
    fn explicit_moves_replace_the_policy() {
        let stages = vec![
            stage("a", "A", Category::Prospect, Role::Normal),
            stage("b", "B", Category::Customer, Role::Normal),
            stage("c", "C", Category::Customer, Role::Normal),
        ];
        let m = Model::new(
            stages,
            vec![Allowed { from: None, to: key("a") }, Allowed { from: Some(key("a")), to: key("b") }],
        )
        .unwrap();
        assert!(m.can_move(None, &key("a")));
        assert!(m.can_move(Some(&key("a")), &key("b")));
        assert!(!m.can_move(Some(&key("a")), &key("c")));
        assert!(m.can_move(Some(&key("b")), &key("a")), "a wildcard `from` allows a move from any stage");
        let removed = m.removed_in(&Model::default_model());
        assert_eq!(removed, vec![key("a"), key("b"), key("c")]);
    }
}
