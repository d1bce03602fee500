// Never download a browser: runners use the system Chrome/Chromium (CHROME_PATH, else /usr/bin/chromium).
module.exports = { skipDownload: true };
