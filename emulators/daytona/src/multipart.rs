//! Writing `multipart/form-data` answers (bulk-download): one part per requested path, either
//! the file (`name="file"`) or an error (`name="error"`, JSON), each named by `filename`.

/// A multipart body under construction.
pub struct MultipartWriter {
    boundary: String,
    body: Vec<u8>,
}

impl MultipartWriter {
    pub fn new() -> Self {
        MultipartWriter {
            boundary: format!("daytona-emulator-{}", uuid::Uuid::new_v4().simple()),
            body: Vec::new(),
        }
    }

    /// The `content-type` header value.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// Adds a part with a form `name`, a `filename` and its own content type.
    pub fn part(&mut self, name: &str, filename: &str, content_type: &str, data: &[u8]) {
        let filename = filename.replace('\\', "\\\\").replace('"', "\\\"");
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                 Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                self.boundary,
                data.len()
            )
            .as_bytes(),
        );
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        self.body
    }
}
