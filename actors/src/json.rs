//! A JSON value that also travels in the binary codec.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Any JSON value, for agents whose messages are free-form.
///
/// In JSON (the gateway) it is the value itself. In the binary codec it is
/// the value's JSON text, since the binary codec is not self-describing and
/// so cannot carry an arbitrary value directly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Json(pub serde_json::Value);

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.0.serialize(serializer)
        } else {
            serializer.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            serde_json::Value::deserialize(deserializer).map(Json)
        } else {
            let text = String::deserialize(deserializer)?;
            serde_json::from_str(&text)
                .map(Json)
                .map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn json_values_survive_the_binary_codec_and_json() {
        let value = Json(serde_json::json!({"a": [1, 2.5, null, "x"], "b": {"c": true}}));
        let bytes = codec::encode(&value).unwrap();
        assert_eq!(codec::decode::<Json>(&bytes).unwrap(), value);
        let text = serde_json::to_string(&value).unwrap();
        assert_eq!(text, r#"{"a":[1,2.5,null,"x"],"b":{"c":true}}"#);
    }
}
