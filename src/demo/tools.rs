//! The arguments of the demo's tool calls: they follow the question, as a real model's would.
//!
//! "What's the weather in Tokyo?" must call the tool for Tokyo; a demo that always answers
//! Paris looks broken the moment someone tries it. The place is the run of capitalised words
//! after "in", "for" or "at" ("New York", "São Paulo"), else a known city named anywhere in any
//! case, else [`FALLBACK_CITY`]. The argument's name is the tool's first required parameter,
//! so a tool that takes `city` gets `city`; without a schema, `location`, as in OpenAI's guide.

use serde_json::{json, Value};

use super::wire::str_at;

/// The place when the question names none the demo can recognise.
pub(super) const FALLBACK_CITY: &str = "Paris";

/// Cities recognised wherever and however they are written ("weather paris").
const KNOWN_CITIES: [&str; 16] = [
    "Amsterdam",
    "Berlin",
    "Chicago",
    "Lisbon",
    "London",
    "Madrid",
    "Mumbai",
    "New York",
    "Paris",
    "Rome",
    "San Francisco",
    "Seoul",
    "Sydney",
    "Tokyo",
    "Toronto",
    "Vienna",
];

/// Capitalised words after "in"/"for"/"at" that are not places ("weather in Celsius").
const NOT_PLACES: [&str; 8] = [
    "Celsius",
    "Fahrenheit",
    "Kelvin",
    "January",
    "July",
    "December",
    "Monday",
    "Sunday",
];

/// The JSON arguments for a call to `tool` (a request's `tools[k]`) answering `question`.
pub(super) fn arguments(question: &str, tool: Option<&Value>) -> String {
    let name = tool
        .and_then(|t| str_at(t, "/function/parameters/required/0"))
        .unwrap_or("location");
    let city = city(question).unwrap_or_else(|| FALLBACK_CITY.to_string());
    let mut arguments = serde_json::Map::new();
    arguments.insert(name.to_string(), json!(city));
    Value::Object(arguments).to_string()
}

/// The place `question` asks about, when it names one.
pub(super) fn city(question: &str) -> Option<String> {
    after_preposition(question).or_else(|| known_city(question))
}

fn after_preposition(question: &str) -> Option<String> {
    let words: Vec<&str> = question.split_whitespace().collect();
    let starts = words.iter().enumerate().filter(|(_, word)| {
        let word = word.to_ascii_lowercase();
        matches!(word.as_str(), "in" | "for" | "at")
    });
    starts
        .map(|(at, _)| capitalised_run(&words[at + 1..]))
        .find(|run| !run.is_empty())
}

/// The leading capitalised words of `words`, punctuation trimmed ("Paris?" is Paris, "Tokyo's"
/// Tokyo); a word ending in punctuation ends the run.
fn capitalised_run(words: &[&str]) -> String {
    let mut run: Vec<&str> = Vec::new();
    for word in words {
        let trimmed = word.trim_end_matches("'s").trim_end_matches("’s");
        let clean = trimmed.trim_matches(|c: char| !c.is_alphanumeric() && c != '-');
        let capital = clean.chars().next().is_some_and(char::is_uppercase);
        if !capital || NOT_PLACES.contains(&clean) {
            break;
        }
        run.push(clean);
        if clean.len() != word.len() {
            break;
        }
    }
    run.join(" ")
}

fn known_city(question: &str) -> Option<String> {
    let lower = question.to_lowercase();
    KNOWN_CITIES
        .iter()
        .find(|city| lower.contains(&city.to_lowercase()))
        .map(|city| city.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_city_is_the_one_the_question_names() {
        for (question, place) in [
            ("What's the weather in Paris?", "Paris"),
            ("What's the weather like in Tokyo today?", "Tokyo"),
            (
                "weather forecast for New York City, please",
                "New York City",
            ),
            ("Is it sunny at São Paulo's beaches?", "São Paulo"),
            ("How cold is it in Celsius for Berlin?", "Berlin"),
            ("weather in the centre of london", "London"),
        ] {
            assert_eq!(city(question).as_deref(), Some(place), "{question}");
        }
        assert_eq!(city("What's the weather like?"), None);
    }

    #[test]
    fn arguments_name_the_city_under_the_tools_own_parameter() {
        let question = "What's the weather in Tokyo?";
        assert_eq!(arguments(question, None), r#"{"location":"Tokyo"}"#);
        let tool = json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}});
        assert_eq!(arguments(question, Some(&tool)), r#"{"city":"Tokyo"}"#);
        assert_eq!(
            arguments("Weather?", Some(&tool)),
            format!(r#"{{"city":"{FALLBACK_CITY}"}}"#)
        );
    }
}
