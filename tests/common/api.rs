//! A client of the admin API for the tests: bearer token per call, the
//! answer as (status, JSON).

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::Harness;

pub const EDIT: &str = "edit-token";
pub const VIEW: &str = "view-token";

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(h: &Harness) -> Api {
        Api {
            base: format!("http://{}/api/v1", h.server.admin.expect("admin listener")),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, r: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = r.send().await.expect("HTTP answer");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, v)
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token),
        )
        .await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    pub async fn import(&self, token: &str, text: &str) -> (StatusCode, Value) {
        self.call(
            self.http
                .post(format!("{}/exceptions/import", self.base))
                .bearer_auth(token)
                .header("content-type", "text/plain")
                .body(text.to_string()),
        )
        .await
    }

    pub async fn delete(&self, token: &str, value: &str) -> (StatusCode, Value) {
        self.call(
            self.http
                .delete(format!("{}/exceptions/{value}", self.base))
                .bearer_auth(token),
        )
        .await
    }

    pub async fn verdict(&self, number: &str) -> String {
        let (s, v) = self
            .post(
                VIEW,
                "/screen",
                json!({"number": number, "line": "+4930901820", "direction": "inbound"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["verdict"].as_str().unwrap().to_string()
    }
}
