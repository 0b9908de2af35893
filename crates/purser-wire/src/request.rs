//! Wire input: a JSON body read as a map, every field checked by hand so
//! that each refusal names its `param`. Unknown fields are refused.

use purser_core::{
    Amount, AutoRechargeConfig, ChargeMode, Credits, IdError, Metadata, Notation, PackageId,
    Quantity, TaskId, Timestamp,
};
use serde_json::{Map, Value};

use crate::error::ApiError;

#[derive(Debug)]
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// Parses a body; an empty one means `{}`. Fields outside `allowed` are refused.
    pub fn parse(bytes: &[u8], allowed: &[&str]) -> Result<Fields, ApiError> {
        let fields = Fields::parse_value(bytes)?;
        fields.only(allowed)?;
        Ok(fields)
    }

    fn parse_value(bytes: &[u8]) -> Result<Fields, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields { map: Map::new() });
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => {
                // A parsed map keeps the last of a repeated key: refused instead.
                if let Some(key) = repeated_key(bytes) {
                    return Err(ApiError::invalid(
                        &key,
                        format!("{key} is given more than once"),
                    ));
                }
                Ok(Fields { map })
            }
            Ok(_) => Err(ApiError::malformed("the body must be a JSON object")),
            Err(error) => Err(ApiError::malformed(format!("malformed JSON: {error}"))),
        }
    }

    pub fn from_map(map: Map<String, Value>, allowed: &[&str]) -> Result<Fields, ApiError> {
        let fields = Fields { map };
        fields.only(allowed)?;
        Ok(fields)
    }

    /// The body's canonical JSON (keys sorted) without the named fields, as
    /// `idempotency::fingerprint` would write it.
    pub fn canonical_without(mut self, names: &[&str]) -> Vec<u8> {
        for name in names {
            self.map.remove(*name);
        }
        serde_json::to_vec(&Value::Object(self.map)).expect("JSON")
    }

    fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.map.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(unknown) => Err(ApiError::unknown_field(unknown)),
            None => Ok(()),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|value| !value.is_null())
    }

    /// Whether the field is given as `null` (on an update: clear it).
    pub fn is_null(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(Value::is_null)
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|value| !value.is_null())
    }

    /// Decimal text of an amount field: a string, or a JSON number's own text.
    fn decimal(&self, name: &str) -> Result<Option<(&str, Notation)>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some((text, Notation::String))),
            Some(Value::Number(number)) => Ok(Some((number.as_str(), Notation::Number))),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("{name} must be a decimal string or number"),
            )),
        }
    }

    /// A positive credit amount.
    pub fn credits(&self, name: &str) -> Result<Option<Credits>, ApiError> {
        self.decimal(name)?
            .map(|(text, notation)| {
                Credits::parse_positive(text, notation)
                    .map_err(|error| ApiError::invalid(name, format!("{name} {error}")))
            })
            .transpose()
    }

    /// A positive quantity.
    pub fn quantity(&self, name: &str) -> Result<Option<Quantity>, ApiError> {
        self.decimal(name)?
            .map(|(text, notation)| {
                Quantity::parse_positive(text, notation)
                    .map_err(|error| ApiError::invalid(name, format!("{name} {error}")))
            })
            .transpose()
    }

    pub fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be a string"))),
        }
    }

    /// An operator id (account, tier, task, package, member).
    pub fn id<T>(
        &self,
        name: &str,
        parse: fn(&str) -> Result<T, IdError>,
    ) -> Result<Option<T>, ApiError> {
        self.string(name)?
            .map(|text| {
                parse(text).map_err(|error| ApiError::invalid(name, format!("{name} {error}")))
            })
            .transpose()
    }

    pub fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(number)) => number
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(name, format!("{name} must be an integer"))),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("{name} must be an integer"),
            )),
        }
    }

    pub fn time(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        self.string(name)?
            .map(|text| {
                Timestamp::parse_rfc3339(text).ok_or_else(|| {
                    ApiError::invalid(name, format!("{name} must be an RFC 3339 time"))
                })
            })
            .transpose()
    }

    pub fn metadata(&self, name: &str) -> Result<Option<Metadata>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => {
                let mut pairs = Vec::with_capacity(map.len());
                for (key, value) in map {
                    match value {
                        Value::String(text) => pairs.push((key.clone(), text.clone())),
                        _ => {
                            return Err(ApiError::invalid(
                                name,
                                format!("{name} values must be strings"),
                            ));
                        }
                    }
                }
                Metadata::new(pairs)
                    .map(Some)
                    .map_err(|limit| ApiError::invalid(name, format!("{name} exceeds {limit}")))
            }
            Some(_) => Err(ApiError::invalid(
                name,
                format!("{name} must be an object of strings"),
            )),
        }
    }

    /// One of `choices`.
    pub fn choice(&self, name: &str, choices: &[&str]) -> Result<Option<usize>, ApiError> {
        self.string(name)?
            .map(|text| {
                choices
                    .iter()
                    .position(|choice| *choice == text)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            name,
                            format!("{name} must be one of {}", choices.join(", ")),
                        )
                    })
            })
            .transpose()
    }

    /// What a charge or hold is for: `credits`, or `task` and `quantity`.
    pub fn amount(&self) -> Result<Amount, ApiError> {
        let credits = self.credits("credits")?;
        let task = self.id("task", TaskId::parse)?;
        let quantity = self.quantity("quantity")?;
        match (credits, task, quantity) {
            (Some(credits), None, None) => Ok(Amount::Credits(credits)),
            (None, Some(task), Some(quantity)) => Ok(Amount::Task { task, quantity }),
            (None, Some(_), None) => Err(ApiError::missing("quantity")),
            (None, None, Some(_)) => Err(ApiError::missing("task")),
            (None, None, None) => Err(ApiError::bad_request(
                "parameter_missing",
                "give either credits, or task and quantity",
            )),
            _ => Err(ApiError::bad_request(
                "parameter_conflict",
                "give either credits, or task and quantity, not both",
            )),
        }
    }

    /// A charge's `mode`: `strict` (the default) or `record`.
    pub fn mode(&self) -> Result<ChargeMode, ApiError> {
        Ok(match self.choice("mode", &["strict", "record"])? {
            Some(1) => ChargeMode::Record,
            _ => ChargeMode::Strict,
        })
    }

    /// A list of at most `max` positive credit amounts (each a decimal
    /// string or a JSON number, parsed exactly from its text).
    pub fn credits_list(&self, name: &str, max: usize) -> Result<Option<Vec<Credits>>, ApiError> {
        let Some(items) = self.array(name)? else {
            return Ok(None);
        };
        if items.len() > max {
            return Err(ApiError::invalid(
                name,
                format!("{name} holds at most {max} amounts"),
            ));
        }
        items
            .iter()
            .map(|item| {
                let (text, notation) = match item {
                    Value::String(text) => (text.as_str(), Notation::String),
                    Value::Number(number) => (number.as_str(), Notation::Number),
                    _ => {
                        return Err(ApiError::invalid(
                            name,
                            format!("{name} must hold decimal strings or numbers"),
                        ));
                    }
                };
                Credits::parse_positive(text, notation)
                    .map_err(|error| ApiError::invalid(name, format!("{name}: an amount {error}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An auto-recharge setting (API.md "Alerts and auto-recharge"):
    /// `{"enabled", "threshold", "package", "max_per_month"?}`.
    /// Errors name the inner field (`auto_recharge.threshold`).
    pub fn auto_recharge(&self, name: &str) -> Result<Option<AutoRechargeConfig>, ApiError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let Value::Object(map) = value else {
            return Err(ApiError::invalid(name, format!("{name} must be an object")));
        };
        let inner = |mut error: ApiError| {
            error.param = Some(match error.param.take() {
                Some(param) => format!("{name}.{param}"),
                None => name.to_owned(),
            });
            error
        };
        let fields = Fields::from_map(
            map.clone(),
            &["enabled", "threshold", "package", "max_per_month"],
        )
        .map_err(inner)?;
        // Required (API.md): an update that leaves it out must not switch
        // back on what three failed payments switched off.
        let enabled = match fields.get("enabled") {
            None => return Err(inner(ApiError::missing("enabled"))),
            Some(Value::Bool(enabled)) => *enabled,
            Some(_) => {
                return Err(inner(ApiError::invalid(
                    "enabled",
                    "enabled must be true or false",
                )));
            }
        };
        let threshold = fields
            .credits("threshold")
            .map_err(inner)?
            .ok_or_else(|| inner(ApiError::missing("threshold")))?;
        let package = fields
            .id("package", PackageId::parse)
            .map_err(inner)?
            .ok_or_else(|| inner(ApiError::missing("package")))?;
        let max_per_month = match fields.integer("max_per_month").map_err(inner)? {
            None => None,
            Some(max @ 1..=1_000) => Some(max as u32),
            Some(_) => {
                return Err(inner(ApiError::invalid(
                    "max_per_month",
                    "max_per_month must be from 1 to 1000",
                )));
            }
        };
        Ok(Some(AutoRechargeConfig {
            enabled,
            threshold,
            package,
            max_per_month,
        }))
    }

    pub fn array(&self, name: &str) -> Result<Option<&Vec<Value>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be an array"))),
        }
    }
}

/// The first key that an object of a (well-formed) JSON document repeats.
fn repeated_key(bytes: &[u8]) -> Option<String> {
    let found = std::cell::RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // Deeply nested documents are refused by serde_json's recursion limit.
    let _ = serde::de::DeserializeSeed::deserialize(Walk(&found), &mut deserializer);
    found.into_inner()
}

/// Walks a JSON value, noting the first repeated key of any object.
struct Walk<'a>(&'a std::cell::RefCell<Option<String>>);

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Walk(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Few keys: a linear scan; many: a set, so no object costs quadratic time.
        let mut seen: Vec<String> = Vec::new();
        let mut many: std::collections::HashSet<String> = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let repeated = if many.is_empty() && seen.len() < 16 {
                seen.contains(&key)
            } else {
                many.extend(seen.drain(..));
                many.contains(&key)
            };
            if repeated {
                *self.0.borrow_mut() = Some(key);
                return Err(serde::de::Error::custom("repeated key"));
            }
            if many.is_empty() {
                seen.push(key);
            } else {
                many.insert(key);
            }
            map.next_value_seed(Walk(self.0))?;
        }
        Ok(())
    }
}

pub fn required<T>(value: Option<T>, name: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::missing(name))
}
