//! A contact's journey and the built-in progression rules, as pure functions of the model, the
//! rule settings and the events in time order. Rebuilding the history from scratch after a
//! backdated event (or an import) is the same function: `replay`.

use super::model::{Category, Model, StageKey};

/// What happened, as far as the rules care.
#[derive(Debug, Clone, PartialEq)]
pub enum Happening {
    /// A touchpoint; `lead` when it captures a lead (form submitted, lead captured, demo,
    /// meeting).
    Touchpoint {
        lead: bool,
    },
    Purchase,
    Referral,
    Review,
    Custom,
    /// A survey response's primary score (NPS 0-10: 9-10 is a promoter).
    NpsScore(i32),
    /// A person moved the contact (validated against the model separately).
    Manual {
        to: StageKey,
    },
    /// A tenant automation moved the contact.
    Automated {
        to: StageKey,
    },
}

/// An item of the timeline: when, what, and its id (journey event id or transition request).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub at: i64,
    pub id: String,
    pub what: Happening,
}

/// Per-tenant switches of the built-in rules.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct Rules {
    pub first_touchpoint_awareness: bool,
    pub lead_captured_acquisition: bool,
    pub first_purchase_conversion: bool,
    pub repeat_purchase_retention: bool,
    /// Customer for this long (µs) → retention; `None` = off.
    pub customer_tenure_retention: Option<i64>,
    pub advocacy_loyalty: bool,
    pub dormancy: bool,
    pub reactivation: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            first_touchpoint_awareness: true,
            lead_captured_acquisition: true,
            first_purchase_conversion: true,
            repeat_purchase_retention: true,
            customer_tenure_retention: None,
            advocacy_loyalty: true,
            dormancy: true,
            reactivation: true,
        }
    }
}

/// Why a transition happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A built-in rule, by name.
    Rule(&'static str),
    Manual,
    Automation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Option<StageKey>,
    pub to: StageKey,
    pub at: i64,
    pub cause: Cause,
    /// The timeline item behind it (empty for dormancy).
    pub cause_ref: String,
    pub reactivation: bool,
}

/// Where a contact stands, derived from its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journey {
    pub current: Option<StageKey>,
    pub entered_at: i64,
    pub purchases: u32,
    pub last_activity: Option<i64>,
    /// When a person or an automation last moved the contact: the dormancy clock restarts
    /// there (a contact placed in a stage on purpose, e.g. won back, is not dormant again at
    /// once, nor dormant at a time before the move).
    pub moved_at: Option<i64>,
    /// When the contact first became a customer.
    pub customer_since: Option<i64>,
    /// The stage held before falling into a lost stage (where a return lands).
    pub before_lost: Option<StageKey>,
    pub reactivations: u32,
    pub transitions: Vec<Transition>,
}

impl Journey {
    fn move_to(&mut self, model: &Model, to: StageKey, at: i64, cause: Cause, cause_ref: &str, reactivation: bool) {
        if self.current.as_ref() == Some(&to) {
            return;
        }
        let was_lost = self.current.as_ref().and_then(|k| model.stage(k)).is_some_and(|s| s.category == Category::Lost);
        let into = model.stage(&to).map(|s| s.category);
        if into == Some(Category::Lost) && !was_lost {
            self.before_lost.clone_from(&self.current);
        }
        if into == Some(Category::Customer) && self.customer_since.is_none() {
            self.customer_since = Some(at);
        }
        if reactivation {
            self.reactivations += 1;
        }
        self.transitions.push(Transition {
            from: self.current.clone(),
            to: to.clone(),
            at,
            cause,
            cause_ref: cause_ref.to_owned(),
            reactivation,
        });
        self.current = Some(to);
        self.entered_at = at;
    }

    fn is_before(&self, model: &Model, target: &StageKey) -> bool {
        match &self.current {
            None => true,
            Some(cur) => model.is_later(cur, target),
        }
    }

    fn in_category(&self, model: &Model, c: Category) -> bool {
        self.current.as_ref().and_then(|k| model.stage(k)).is_some_and(|s| s.category == c)
    }

    /// When the contact becomes dormant if nothing happens before: its stage's threshold
    /// after the later of its last activity and the last move by hand or automation. `None`:
    /// never (rule off, no activity yet, or a stage without a threshold).
    pub fn dormant_at(&self, model: &Model, rules: &Rules) -> Option<i64> {
        if !rules.dormancy {
            return None;
        }
        let since = self.last_activity?.max(self.moved_at.unwrap_or(i64::MIN));
        Some(since + model.dormancy_of(self.current.as_ref()?)?)
    }

    /// Dormancy check at time `now`: a contact in a stage with a threshold and no activity
    /// for that long becomes dormant (at the moment the threshold passed).
    fn check_dormancy(&mut self, model: &Model, rules: &Rules, now: i64) {
        let Some(dormant) = model.milestones().dormant else { return };
        if let Some(at) = self.dormant_at(model, rules)
            && at <= now
        {
            self.move_to(model, dormant, at, Cause::Rule("dormancy"), "", false);
        }
    }

    fn check_tenure(&mut self, model: &Model, rules: &Rules, now: i64) {
        let (Some(tenure), Some(since)) = (rules.customer_tenure_retention, self.customer_since) else { return };
        let ms = model.milestones();
        if now - since >= tenure && self.in_category(model, Category::Customer) && self.is_before(model, &ms.retention)
        {
            self.move_to(model, ms.retention, since + tenure, Cause::Rule("customer_tenure_retention"), "", false);
        }
    }

    /// Apply one timeline item (items must come in time order).
    pub fn apply(&mut self, model: &Model, rules: &Rules, item: &Item) {
        // Time passed since the last item may have made the contact dormant, or retained.
        self.check_tenure(model, rules, item.at);
        self.check_dormancy(model, rules, item.at);
        let ms = model.milestones();
        if let Happening::Manual { to } | Happening::Automated { to } = &item.what {
            let cause = if matches!(item.what, Happening::Manual { .. }) { Cause::Manual } else { Cause::Automation };
            let returning = self.in_category(model, Category::Lost)
                && model.stage(to).is_some_and(|s| s.category != Category::Lost);
            self.move_to(model, to.clone(), item.at, cause, &item.id, returning);
            self.moved_at = Some(item.at);
            return;
        }
        // Any event from a lost contact is a return.
        if self.in_category(model, Category::Lost) && rules.reactivation {
            let to = ms.reactivated.clone().or_else(|| self.before_lost.clone()).unwrap_or_else(|| ms.entry.clone());
            self.move_to(model, to, item.at, Cause::Rule("reactivation"), &item.id, true);
        }
        self.last_activity = Some(item.at);
        let target: Option<(StageKey, &'static str)> = match &item.what {
            Happening::Touchpoint { lead } => {
                if *lead && rules.lead_captured_acquisition && self.is_before(model, &ms.lead) {
                    Some((ms.lead.clone(), "lead_captured_acquisition"))
                } else if self.current.is_none() && rules.first_touchpoint_awareness {
                    Some((ms.entry.clone(), "first_touchpoint_awareness"))
                } else {
                    None
                }
            }
            Happening::Purchase => {
                self.purchases += 1;
                if self.purchases == 1 && rules.first_purchase_conversion && self.is_before(model, &ms.conversion) {
                    Some((ms.conversion.clone(), "first_purchase_conversion"))
                } else if self.purchases >= 2 && rules.repeat_purchase_retention && self.is_before(model, &ms.retention)
                {
                    Some((ms.retention.clone(), "repeat_purchase_retention"))
                } else {
                    None
                }
            }
            Happening::Referral | Happening::Review => self.advocacy(model, rules, &ms.loyalty),
            Happening::NpsScore(score) if *score >= 9 => self.advocacy(model, rules, &ms.loyalty),
            Happening::NpsScore(_) | Happening::Custom => {
                if self.current.is_none() && rules.first_touchpoint_awareness {
                    Some((ms.entry.clone(), "first_touchpoint_awareness"))
                } else {
                    None
                }
            }
            Happening::Manual { .. } | Happening::Automated { .. } => None,
        };
        if let Some((to, rule)) = target {
            self.move_to(model, to, item.at, Cause::Rule(rule), &item.id, false);
        }
    }

    fn advocacy(&self, model: &Model, rules: &Rules, loyalty: &StageKey) -> Option<(StageKey, &'static str)> {
        (rules.advocacy_loyalty && self.in_category(model, Category::Customer) && self.is_before(model, loyalty))
            .then(|| (loyalty.clone(), "advocacy_loyalty"))
    }

    /// Bring the journey up to `now` (dormancy and tenure rules of the scheduler).
    pub fn advance_to(&mut self, model: &Model, rules: &Rules, now: i64) {
        self.check_tenure(model, rules, now);
        self.check_dormancy(model, rules, now);
    }
}

/// The journey implied by a timeline, sorted by time (stable for equal times), up to `now`.
pub fn replay(model: &Model, rules: &Rules, items: &[Item], now: i64) -> Journey {
    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort_by_key(|i| i.at);
    let mut j = Journey::default();
    for item in sorted {
        j.apply(model, rules, item);
    }
    j.advance_to(model, rules, now);
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::DEFAULT_DORMANCY_MICROS;

    const DAY: i64 = 24 * 3600 * 1_000_000;

    fn item(day: i64, what: Happening) -> Item {
        Item { at: day * DAY, id: format!("e{day}"), what }
    }

    fn stages(j: &Journey) -> Vec<&str> {
        j.transitions.iter().map(|t| t.to.as_str()).collect()
    }

    fn key(s: &str) -> StageKey {
        StageKey::parse("k", s).unwrap()
    }

    #[test]
    fn the_whole_lifecycle_by_rules() {
        let m = Model::default_model();
        let items = vec![
            item(1, Happening::Touchpoint { lead: false }),
            item(2, Happening::Touchpoint { lead: true }),
            item(5, Happening::Purchase),
            item(20, Happening::Purchase),
            item(30, Happening::NpsScore(10)),
        ];
        let j = replay(&m, &Rules::default(), &items, 31 * DAY);
        assert_eq!(stages(&j), vec!["awareness", "acquisition", "conversion", "retention", "loyalty"]);
        assert_eq!(j.transitions[2].cause, Cause::Rule("first_purchase_conversion"));
        assert_eq!(j.transitions[2].cause_ref, "e5");
        assert_eq!(j.customer_since, Some(5 * DAY));
        assert_eq!(j.entered_at, 30 * DAY);
    }

    #[test]
    fn first_purchase_skips_ahead_and_rules_never_move_back() {
        let m = Model::default_model();
        let j = replay(
            &m,
            &Rules::default(),
            &[item(1, Happening::Purchase), item(2, Happening::Touchpoint { lead: true })],
            3 * DAY,
        );
        assert_eq!(stages(&j), vec!["conversion"]);
    }

    #[test]
    fn reviews_and_referrals_make_customers_advocates() {
        let m = Model::default_model();
        for what in [Happening::Review, Happening::Referral, Happening::NpsScore(9)] {
            let j = replay(&m, &Rules::default(), &[item(1, Happening::Purchase), item(2, what.clone())], 3 * DAY);
            assert_eq!(stages(&j), vec!["conversion", "loyalty"], "{what:?}");
            assert_eq!(j.transitions[1].cause, Cause::Rule("advocacy_loyalty"));
        }
        let off = Rules { advocacy_loyalty: false, ..Rules::default() };
        assert_eq!(
            stages(&replay(&m, &off, &[item(1, Happening::Purchase), item(2, Happening::Review)], 3 * DAY)),
            vec!["conversion"]
        );
    }

    #[test]
    fn detractors_and_prospect_referrals_do_not_make_advocates() {
        let m = Model::default_model();
        let j = replay(
            &m,
            &Rules::default(),
            &[
                item(1, Happening::Touchpoint { lead: false }),
                item(2, Happening::Referral),
                item(3, Happening::NpsScore(3)),
            ],
            4 * DAY,
        );
        assert_eq!(stages(&j), vec!["awareness"]);
    }

    #[test]
    fn dormancy_then_reactivation_into_the_stage_left() {
        let m = Model::default_model();
        let items = vec![
            item(1, Happening::Purchase),
            item(2, Happening::Purchase),
            item(200, Happening::Touchpoint { lead: false }),
        ];
        let j = replay(&m, &Rules::default(), &items, 201 * DAY);
        assert_eq!(stages(&j), vec!["conversion", "retention", "dormant", "retention"]);
        let dormant = &j.transitions[2];
        assert_eq!(dormant.at, 2 * DAY + DEFAULT_DORMANCY_MICROS, "dormant from the moment the threshold passed");
        assert!(j.transitions[3].reactivation);
        assert_eq!(j.reactivations, 1);
        // Without the return, the scheduler's advance makes it dormant.
        let mut j2 = replay(&m, &Rules::default(), &items[..2], 10 * DAY);
        assert_eq!(j2.current, Some(key("retention")));
        j2.advance_to(&m, &Rules::default(), 100 * DAY);
        assert_eq!(j2.current, Some(key("dormant")));
    }

    #[test]
    fn backdated_events_are_placed_in_order() {
        let m = Model::default_model();
        // Arrives last but happened first: the history is rebuilt as if it came in order.
        let items = vec![item(10, Happening::Purchase), item(3, Happening::Touchpoint { lead: true })];
        let j = replay(&m, &Rules::default(), &items, 11 * DAY);
        assert_eq!(stages(&j), vec!["acquisition", "conversion"]);
        assert_eq!(j.transitions[0].at, 3 * DAY);
    }

    #[test]
    fn manual_moves_go_back_and_count_returns() {
        let m = Model::default_model();
        let items = vec![
            item(1, Happening::Purchase),
            item(2, Happening::Manual { to: key("churned") }),
            item(3, Happening::Manual { to: key("acquisition") }),
        ];
        let j = replay(&m, &Rules::default(), &items, 4 * DAY);
        assert_eq!(stages(&j), vec!["conversion", "churned", "acquisition"]);
        assert_eq!(j.transitions[1].cause, Cause::Manual);
        assert!(j.transitions[2].reactivation);
    }

    #[test]
    fn a_won_back_contact_is_not_dormant_again_until_the_threshold_after_the_move() {
        let m = Model::default_model();
        let dormancy = DEFAULT_DORMANCY_MICROS;
        let items = vec![item(1, Happening::Purchase), item(200, Happening::Manual { to: key("retention") })];
        let j = replay(&m, &Rules::default(), &items, 201 * DAY);
        assert_eq!(stages(&j), vec!["conversion", "dormant", "retention"], "not dormant again at once");
        assert!(j.transitions[2].reactivation);
        assert_eq!(j.dormant_at(&m, &Rules::default()), Some(200 * DAY + dormancy), "the clock restarts at the move");
        let later = replay(&m, &Rules::default(), &items, 200 * DAY + dormancy);
        assert_eq!(stages(&later), vec!["conversion", "dormant", "retention", "dormant"]);
        assert_eq!(later.transitions[3].at, 200 * DAY + dormancy);
        assert!(later.transitions.windows(2).all(|w| w[0].at <= w[1].at), "history in time order");
        // Activity after the move counts from the activity.
        let mut with_activity = items.clone();
        with_activity.push(item(230, Happening::Custom));
        let j = replay(&m, &Rules::default(), &with_activity, 231 * DAY);
        assert_eq!(j.dormant_at(&m, &Rules::default()), Some(230 * DAY + dormancy));
    }

    #[test]
    fn survey_answers_are_activity_and_bring_lost_contacts_back() {
        let m = Model::default_model();
        for answer in [Happening::NpsScore(7), Happening::Custom] {
            let items = vec![item(1, Happening::Purchase), item(200, answer.clone())];
            let j = replay(&m, &Rules::default(), &items, 201 * DAY);
            assert_eq!(stages(&j), vec!["conversion", "dormant", "conversion"], "{answer:?}");
            assert!(j.transitions[2].reactivation);
            assert_eq!(j.transitions[2].cause, Cause::Rule("reactivation"));
            assert_eq!(j.last_activity, Some(200 * DAY));
            // An answer within the threshold keeps the contact from going dormant.
            let items = vec![item(1, Happening::Purchase), item(80, answer.clone())];
            let j = replay(&m, &Rules::default(), &items, 100 * DAY);
            assert_eq!(stages(&j), vec!["conversion"], "{answer:?}");
            assert_eq!(j.dormant_at(&m, &Rules::default()), Some(80 * DAY + DEFAULT_DORMANCY_MICROS));
        }
    }

    #[test]
    fn switched_off_rules_do_nothing_and_tenure_rule_retains() {
        let m = Model::default_model();
        let off = Rules { first_purchase_conversion: false, first_touchpoint_awareness: false, ..Rules::default() };
        assert!(replay(&m, &off, &[item(1, Happening::Purchase)], 2 * DAY).transitions.is_empty());
        let tenure = Rules { customer_tenure_retention: Some(30 * DAY), ..Rules::default() };
        let j = replay(
            &m,
            &tenure,
            &[item(1, Happening::Purchase), item(40, Happening::Touchpoint { lead: false })],
            41 * DAY,
        );
        assert_eq!(stages(&j), vec!["conversion", "retention"]);
        assert_eq!(j.transitions[1].at, 31 * DAY);
    }
}
