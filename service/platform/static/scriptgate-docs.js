// Swagger UI over this server's OpenAPI document (/_platform/openapi.json).
// The document lists only the zones the caller's keys open, so the keys entered under
// "Authorize" are sent with the document's own request too, and the document is fetched
// again after Authorize and Logout. Keys stay in this page's memory only.
(function () {
  "use strict";
  var ui = null;

  function withKeys(request) {
    if (!ui || !request.loadSpec) {
      return request; // "Try it out" calls get their key from Swagger UI itself
    }
    ui.authSelectors.authorized().forEach(function (entry) {
      var scheme = entry.get("schema");
      var value = entry.get("value");
      if (scheme && value && scheme.get("in") === "header") {
        request.headers[scheme.get("name")] = value;
      }
    });
    return request;
  }

  function refetchAfter(original, system) {
    return function (payload) {
      var result = original(payload);
      window.setTimeout(function () { system.specActions.download(); }, 0);
      return result;
    };
  }

  function RefetchOnAuthorize() {
    return {
      statePlugins: {
        auth: {
          wrapActions: { authorize: refetchAfter, logout: refetchAfter },
        },
      },
    };
  }

  window.addEventListener("load", function () {
    ui = window.SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      displayRequestDuration: true,
      showCommonExtensions: true,
      tryItOutEnabled: true,
      persistAuthorization: false,
      requestInterceptor: withKeys,
      presets: [window.SwaggerUIBundle.presets.apis],
      plugins: [RefetchOnAuthorize],
      layout: "BaseLayout",
    });
    window.scriptgateDocs = ui;
  });
})();
